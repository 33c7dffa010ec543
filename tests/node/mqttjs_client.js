// MQTT.js over WebSocket for tests/test_websocket.py.
// Usage: node mqttjs_client.js '{"url": "ws://127.0.0.1:P/mqtt", "version": 4|5,
//   "sub": "topic", "pub": "topic", "payload": "text", "ca": "/path/ca.pem"}'
// Connects, subscribes to `sub` (QoS 1) and prints {"event": "ready"}; on the
// first message on `sub` prints it, publishes `payload` on `pub` (QoS 1),
// prints {"event": "published"} and disconnects. One JSON object per line;
// exits 2 on error or after 15 s.
"use strict";
const fs = require("fs");
const mqtt = require("mqtt");

const opts = JSON.parse(process.argv[2]);
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const fail = (why) => {
  say({ event: "error", error: String(why) });
  process.exit(2);
};
setTimeout(() => fail("timeout"), 15000).unref();

const client = mqtt.connect(opts.url, {
  protocolVersion: opts.version,
  clientId: "mqttjs-" + Math.random().toString(16).slice(2),
  reconnectPeriod: 0,
  connectTimeout: 5000,
  ca: opts.ca ? fs.readFileSync(opts.ca) : undefined,
  rejectUnauthorized: true,
});
client.on("error", fail);
client.on("connect", (connack) => {
  client.subscribe(opts.sub, { qos: 1 }, (err, granted) => {
    if (err) return fail(err);
    say({ event: "ready", granted: granted.map((g) => g.qos), protocol: opts.version });
  });
});
let done = false;
client.on("message", (topic, payload) => {
  if (done) return;
  done = true;
  say({ event: "message", topic, payload: payload.toString("base64") });
  client.publish(opts.pub, opts.payload, { qos: 1 }, (err) => {
    if (err) return fail(err);
    say({ event: "published" });
    client.end(false, () => process.exit(0));
  });
});
