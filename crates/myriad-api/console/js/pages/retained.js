// Retained messages: browse by topic prefix a page at a time, delete one (operator).
import { api, withQuery } from '../api.js';
import { can } from '../session.js';
import { busy, confirmAction, cursorPager, errorLine, field, h, replace, section, table, toast } from '../ui.js';

export async function render(main) {
  const box = h('div');
  const err = errorLine();
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Retained messages by prefix' },
    field('Topic prefix', { name: 'prefix', type: 'search' }),
    field('Per page', { name: 'limit', type: 'select', options: [['50', '50'], ['100', '100'], ['500', '500']], value: '100' }),
    h('button', { type: 'submit' }, 'Show'));
  const pager = cursorPager('Retained messages', async (after) => {
    err.clear();
    const d = new FormData(form);
    try {
      const page = await api('GET', withQuery('/api/v1/retained', { prefix: d.get('prefix'), after, limit: d.get('limit') }));
      const headers = ['Topic', 'QoS', 'Bytes', 'Payload'];
      if (can('operate')) headers.push('');
      replace(box, table('Retained messages', headers, page.items.map((m) => {
        const payload = m.payload_utf8 !== undefined && m.payload_utf8 !== null
          ? h('code', null, m.payload_utf8)
          : h('code', { title: 'base64 of the first bytes' }, `base64: ${m.payload_base64 || ''}`);
        const row = [h('code', null, m.topic), String(m.qos), String(m.bytes), payload];
        if (can('operate')) {
          const del = h('button', {
            type: 'button',
            class: 'danger',
            onclick: async () => {
              if (!await confirmAction(`Delete the retained message of ${m.topic}?`, 'Delete')) return;
              await busy(del, async () => {
                await api('DELETE', withQuery('/api/v1/retained', { topic: m.topic }));
                toast(`Deleted ${m.topic}`);
                pager.reload();
              }, err);
            },
          }, 'Delete');
          row.push(del);
        }
        return row;
      }), 'No retained messages under this prefix.'));
      return page;
    } catch (e) {
      err.show(e);
      return null;
    }
  });
  form.addEventListener('submit', (e) => { e.preventDefault(); pager.first(); });
  replace(main, h('h1', null, 'Retained messages'), section('By topic prefix', form, err, box, pager.el));
  await pager.first();
}
