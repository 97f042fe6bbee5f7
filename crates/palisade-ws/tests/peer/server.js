// A scripted WebSocket echo server on the `ws` package, driven by palisade-ws's
// external-peer tests (tests/peer.rs).
//
// It listens on an ephemeral port of 127.0.0.1 and prints `port <n>` once it does. It reports
// on stdout, one line each: `open` (a handshake completed), `text <json string>` (a text
// message arrived; it is echoed, as binary messages are), `closed <code>`.
// It takes commands on stdin, one a line, applied to every open connection:
//   drop         destroy the TCP connection without a close frame
//   silent       stop answering: no pongs, no echoes (TCP stays open)
//   close <code> send a close frame with this code
//   push <text>  send this text
//   refuse       refuse later handshakes with HTTP 503
//   accept       accept them again
// It exits when stdin ends, so it never outlives the test process.
'use strict';

const readline = require('readline');
const { WebSocketServer } = require('ws');

const emit = (line) => process.stdout.write(`${line}\n`);
let refusing = false;
const silent = new WeakSet();

const server = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  // Pongs are sent by hand below, so that a silent connection can stop sending them.
  autoPong: false,
  verifyClient: (_info, done) => (refusing ? done(false, 503, 'try later') : done(true)),
});

server.on('listening', () => emit(`port ${server.address().port}`));

server.on('connection', (ws) => {
  emit('open');
  ws.on('ping', (data) => {
    if (!silent.has(ws)) ws.pong(data);
  });
  ws.on('message', (data, isBinary) => {
    if (silent.has(ws)) return;
    if (!isBinary) emit(`text ${JSON.stringify(data.toString())}`);
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code) => emit(`closed ${code}`));
  ws.on('error', () => {});
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const space = line.indexOf(' ');
  const command = space < 0 ? line : line.slice(0, space);
  const argument = space < 0 ? '' : line.slice(space + 1);
  if (command === 'refuse' || command === 'accept') {
    refusing = command === 'refuse';
    return;
  }
  for (const ws of server.clients) {
    if (command === 'drop') ws.terminate();
    else if (command === 'silent') silent.add(ws);
    else if (command === 'close') ws.close(Number(argument));
    else if (command === 'push') ws.send(argument);
  }
});

process.stdin.on('end', () => process.exit(0));
