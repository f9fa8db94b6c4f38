//! Reading files named in the configuration safely: regular files only, bounded in size, off the
//! runtime and given up after a timeout.

use std::time::Duration;

use crate::error::InvalidInput;

/// How long reading certificate files (or any file named in the configuration) may take before
/// it is given up: a special file that blocks (a FIFO, `/proc/kmsg`) must not hang the process.
pub const FILE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `f` (file reads) on a thread of its own, waiting at most [`FILE_READ_TIMEOUT`]: a read
/// that blocks (a special file) is abandoned, not waited for; the thread does not keep the
/// process alive.
pub(super) fn off_thread<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, InvalidInput> + Send + 'static,
) -> Result<T, InvalidInput> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("azmutex-file-read".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| InvalidInput::CaCertificate(format!("cannot start a thread to read certificates: {e}")))?;
    rx.recv_timeout(FILE_READ_TIMEOUT).unwrap_or_else(|_| {
        Err(InvalidInput::CaCertificate(format!(
            "{what}: reading it took more than {} s (a special file that blocks?)",
            FILE_READ_TIMEOUT.as_secs()
        )))
    })
}

/// The most a certificate file may hold (a system bundle is a few hundred KiB).
pub const MAX_CERTIFICATE_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Reads a PEM certificate file (`--ca-cert`, `SSL_CERT_FILE`) safely: only a regular file (a
/// FIFO or device would block or never end), at most [`MAX_CERTIFICATE_FILE_BYTES`], on a thread
/// of its own given up after [`FILE_READ_TIMEOUT`] (a special file under `/proc` may block on
/// read). The error says what is wrong with the file, never its contents; the file name is
/// quoted only if it does not look like a key or token.
pub fn read_certificate_file(path: &std::path::Path) -> Result<Vec<u8>, InvalidInput> {
    let owned = path.to_path_buf();
    let name = crate::scrub::quote_or_describe(&path.to_string_lossy());
    off_thread(&name, move || read_file_capped(&owned, MAX_CERTIFICATE_FILE_BYTES))
}

/// Reads `path` if it is a regular file of at most `max` bytes (checked before opening and
/// again on the opened file, so that a swap in between is caught), as [`InvalidInput::CaCertificate`]
/// errors naming the file (unless it looks like a secret).
pub(crate) fn read_file_capped(path: &std::path::Path, max: u64) -> Result<Vec<u8>, InvalidInput> {
    read_regular_file(path, max).map_err(|why| {
        let name = crate::scrub::quote_or_describe(&path.to_string_lossy());
        InvalidInput::CaCertificate(format!("{name}: {why}"))
    })
}

/// Reads `path` if it is a regular file of at most `max` bytes; the error says why not (without
/// the file name). Blocking: call it off the async runtime (see [`off_thread`]).
pub(crate) fn read_regular_file(path: &std::path::Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let check = |meta: &std::fs::Metadata| -> Result<(), String> {
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() > max {
            return Err(format!("{} bytes, more than the {max} allowed", meta.len()));
        }
        Ok(())
    };
    check(&std::fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?)?;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it ({e})"))?;
    check(&file.metadata().map_err(|e| format!("cannot read it ({e})"))?)?;
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read it ({e})"))?;
    if data.len() as u64 > max {
        return Err("it grew past the size limit while being read".into());
    }
    Ok(data)
}
