// The lab's Node.js client for the keepalive audit.
//
// node client.js HOST PORT DELAY_MS: socket.setKeepAlive(true, DELAY_MS) once
// connected (0 is setKeepAlive(true)). Requests, says "ready", waits for a
// line on stdin while the connection idles, requests again; exits 0 if the
// connection survived, 1 if not.
'use strict';
const net = require('net');

const [host, port, delay] = process.argv.slice(2);
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};

const sock = net.connect({ host, port: Number(port), timeout: 5000 });
let buf = '';
let answered = null;
sock.on('connect', () => {
  sock.setTimeout(0);
  if (Number(delay) === 0) {
    sock.setKeepAlive(true);
  } else {
    sock.setKeepAlive(true, Number(delay));
  }
  request(() => {
    console.log('ready');
    process.stdin.once('data', () => {
      const timer = setTimeout(() => fail('request after idling: no answer in 5 s'), 5000);
      request(() => {
        clearTimeout(timer);
        console.log('alive');
        process.exit(0);
      });
    });
  });
});
sock.on('timeout', () => fail('connect: timed out'));
sock.on('error', (err) => fail(`socket: ${err.message}`));
sock.on('close', () => fail('socket closed'));
sock.on('data', (data) => {
  buf += data;
  const i = buf.indexOf('\n');
  if (i < 0) return;
  const line = buf.slice(0, i);
  buf = buf.slice(i + 1);
  if (line !== 'ok') fail(`unexpected answer ${JSON.stringify(line)}`);
  const done = answered;
  answered = null;
  if (done) done();
});

function request(done) {
  answered = done;
  sock.write('ping\n');
}
