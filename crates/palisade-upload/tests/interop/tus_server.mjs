// A tus server on @tus/server with @tus/file-store, driven by palisade-upload's interop
// tests (tests/interop.rs) for our client.
//
// Its one argument is the directory the file store keeps uploads in (`<id>` holds the bytes,
// `<id>.json` the upload's length, offset and metadata). It serves `/files` on an ephemeral
// port of 127.0.0.1 and reports on stdout, one line each:
//   extensions <list>            the Tus-Extension it advertises (once, first)
//   port <n>                     it listens (once, second)
//   request <method> <checksum>  a request for an upload arrived, with its Upload-Checksum
//                                header or `-`
//   finished <id> <size>         an upload is complete
//   terminated <id>              an upload was terminated
//   sync                         answers the command `sync` on stdin
// Each line about a request is written before its response is sent, so once the test saw
// a response, a `sync` it sends afterwards comes back after every line about that request.
// It exits when stdin ends, so it never outlives the test process.
import { createRequire } from 'node:module';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';

// The packages are on NODE_PATH, which `require` reads and `import` does not; both are ES
// modules, so resolve them with `require` and load them with `import`.
const require = createRequire(import.meta.url);
const load = (name) => import(pathToFileURL(require.resolve(name)).href);
const { Server, EVENTS } = await load('@tus/server');
const { FileStore } = await load('@tus/file-store');

const emit = (line) => process.stdout.write(`${line}\n`);
const directory = process.argv[2];

const datastore = new FileStore({ directory });
const server = new Server({
  path: '/files',
  datastore,
  onIncomingRequest: async (req) => {
    emit(`request ${req.method} ${req.headers.get('upload-checksum') ?? '-'}`);
  },
});
server.on(EVENTS.POST_FINISH, (_req, _res, upload) => emit(`finished ${upload.id} ${upload.size}`));
server.on(EVENTS.POST_TERMINATE, (_req, _res, id) => emit(`terminated ${id}`));

emit(`extensions ${datastore.extensions.join(',')}`);
const http = server.listen({ host: '127.0.0.1', port: 0 }, () => {
  emit(`port ${http.address().port}`);
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'sync') emit('sync');
});
process.stdin.on('end', () => process.exit(0));
