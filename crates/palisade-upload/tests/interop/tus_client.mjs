// A tus-js-client upload (its Node.js build), driven by palisade-upload's interop tests
// (tests/interop.rs) against our server.
//
// Its one argument is a JSON object:
//   mode       "upload":         upload the whole file
//              "stop":           stop (abort) the upload once its first chunk is committed,
//                                then exit; the upload URL stays in `storage`
//              "stop-resume":    stop like "stop", then resume in this process with a new
//                                Upload given the upload URL (`uploadUrl`)
//              "resume-previous": find the upload "stop" left in `storage` and resume it
//              "terminate":      stop like "stop", terminating the upload on the server
//   endpoint   the creation URL
//   file       the file to upload, read through fs.createReadStream
//   chunkSize  bytes per PATCH
//   metadata   an object of strings, sent as Upload-Metadata
//   storage    a file for tus-js-client's FileUrlStorage (modes "stop" and "resume-previous")
//
// It reports on stdout, one line each:
//   url <url>        the upload URL is known
//   head <offset>    a HEAD answered with this Upload-Offset (what a resume starts from)
//   chunk <offset>   a PATCH committed up to this offset
//   stopped <offset> the upload was aborted with this much committed
//   terminated       the upload was aborted and terminated on the server
//   previous <n>     "resume-previous" found n earlier uploads of this file
//   done <url>       the upload is complete
// and exits 0; on an error it prints it on stderr and exits 1. No retries: a failure is
// reported, not hidden.
import { createRequire } from 'node:module';
import fs from 'node:fs';

// The packages are on NODE_PATH, which `require` reads and `import` does not.
const require = createRequire(import.meta.url);
const { Upload, FileUrlStorage } = require('tus-js-client');

const config = JSON.parse(process.argv[2]);
const emit = (line) => process.stdout.write(`${line}\n`);

function fail(error) {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
}

// One tus-js-client Upload of the file; `stop` ("abort" or "terminate") aborts it after its
// first committed chunk; `previous` resumes the upload found in `storage`.
function run(options, { stop = null, previous = false } = {}) {
  return new Promise((resolve, reject) => {
    const upload = new Upload(fs.createReadStream(config.file), {
      endpoint: config.endpoint,
      chunkSize: config.chunkSize,
      metadata: config.metadata,
      uploadSize: fs.statSync(config.file).size,
      retryDelays: null,
      storeFingerprintForResuming: Boolean(config.storage),
      ...(config.storage ? { urlStorage: new FileUrlStorage(config.storage) } : {}),
      ...options,
      onUploadUrlAvailable: () => emit(`url ${upload.url}`),
      onAfterResponse: (req, res) => {
        if (req.getMethod() === 'HEAD') emit(`head ${res.getHeader('Upload-Offset')}`);
      },
      onChunkComplete: (_size, accepted) => {
        emit(`chunk ${accepted}`);
        if (stop) {
          // Called before the next PATCH is sent: aborting here sends no more bytes.
          upload.abort(stop === 'terminate').then(() => {
            emit(stop === 'terminate' ? 'terminated' : `stopped ${accepted}`);
            resolve({ url: upload.url });
          }, reject);
        }
      },
      onSuccess: () => {
        emit(`done ${upload.url}`);
        resolve({ url: upload.url });
      },
      onError: reject,
    });
    if (!previous) {
      upload.start();
      return;
    }
    upload.findPreviousUploads().then((found) => {
      emit(`previous ${found.length}`);
      if (found.length > 0) upload.resumeFromPreviousUpload(found[0]);
      upload.start();
    }, reject);
  });
}

async function main() {
  switch (config.mode) {
    case 'upload':
      await run({});
      break;
    case 'stop':
      await run({}, { stop: 'abort' });
      break;
    case 'terminate':
      await run({}, { stop: 'terminate' });
      break;
    case 'stop-resume': {
      const stopped = await run({}, { stop: 'abort' });
      await run({ uploadUrl: stopped.url });
      break;
    }
    case 'resume-previous':
      await run({}, { previous: true });
      break;
    default:
      throw new Error(`unknown mode ${config.mode}`);
  }
}

main().then(() => process.exit(0), fail);
