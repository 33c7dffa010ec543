//! Dropping trees of any depth without recursion: the compiler's drop glue
//! recurses once per level, and in the subscription and retained trees the
//! depth is what a peer's topic makes it.

/// A tree node that can give up its children.
pub(crate) trait Subtree: Sized {
    /// Moves the node's children out, leaving it childless.
    fn take_children(&mut self) -> impl Iterator<Item = Self>;
}

/// Takes the subtree below `node` apart on a heap stack; call it from the
/// node's `Drop`.
pub(crate) fn drop_children<N: Subtree>(node: &mut N) {
    let mut pending: Vec<N> = node.take_children().collect();
    while let Some(mut next) = pending.pop() {
        pending.extend(next.take_children());
        // `next` drops here without children: no recursion.
    }
}
