// The peer pair of the upload bench (benches/benches/upload.rs): tus-js-client uploading a
// file to @tus/server with @tus/file-store, the server in a child process (this script run
// with the argument `server <directory>`), so client and server each have a thread, like
// the Rust pair.
//
// Its one argument is a JSON object:
//   file       the file to upload, read through fs.createReadStream
//   store      the directory @tus/file-store keeps uploads in
//   chunkSize  bytes per PATCH
// It prints `ready` once the server listens, then reads commands on stdin, one a line:
//   upload <n>   n uploads, one after the other; before each (outside the timing) the
//                store directory is emptied; prints `elapsed <nanoseconds>`, the sum of
//                the uploads' times from `start()` to `onSuccess`
//   exit         stops the server and exits (so does the end of stdin)
// On an error it prints it on stderr and exits 1. No retries.
import { createRequire } from 'node:module';
import { fork } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';

// The packages are on NODE_PATH, which `require` reads and `import` does not.
const require = createRequire(import.meta.url);
const emit = (line) => process.stdout.write(`${line}\n`);

function fail(error) {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
}

if (process.argv[2] === 'server') {
  // The child: @tus/server on an ephemeral port; sends the port to the parent.
  const load = (name) => import(pathToFileURL(require.resolve(name)).href);
  const { Server } = await load('@tus/server');
  const { FileStore } = await load('@tus/file-store');
  const server = new Server({ path: '/files', datastore: new FileStore({ directory: process.argv[3] }) });
  const http = server.listen({ host: '127.0.0.1', port: 0 }, () => {
    process.send({ port: http.address().port });
  });
  process.on('disconnect', () => process.exit(0));
} else {
  const { Upload } = require('tus-js-client');
  const config = JSON.parse(process.argv[2]);
  const size = fs.statSync(config.file).size;
  const child = fork(fileURLToPath(import.meta.url), ['server', config.store], {
    env: process.env,
  });
  child.on('exit', (code) => code !== 0 && fail(new Error(`server exited with ${code}`)));
  const port = await new Promise((resolve) => child.once('message', (m) => resolve(m.port)));
  const endpoint = `http://127.0.0.1:${port}/files`;

  const upload = () =>
    new Promise((resolve, reject) => {
      const started = process.hrtime.bigint();
      const up = new Upload(fs.createReadStream(config.file), {
        endpoint,
        chunkSize: config.chunkSize,
        uploadSize: size,
        retryDelays: null,
        storeFingerprintForResuming: false,
        onError: reject,
        onSuccess: () => resolve(process.hrtime.bigint() - started),
      });
      up.start();
    });

  const empty = () => {
    for (const name of fs.readdirSync(config.store)) {
      fs.rmSync(path.join(config.store, name), { force: true });
    }
  };

  emit('ready');
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [command, n] = line.split(' ');
    if (command === 'exit') break;
    if (command !== 'upload') fail(new Error(`unknown command ${line}`));
    let total = 0n;
    for (let i = 0; i < Number(n); i += 1) {
      empty();
      total += await upload().catch(fail);
    }
    emit(`elapsed ${total}`);
  }
  child.disconnect();
  child.kill();
  process.exit(0);
}
