//! Static files on a WebSocket port: a request without `Upgrade: websocket` gets a file of
//! the web root (`/` and any path ending in `/` get `index.html`), or an error status.
//! One request per connection; paths never leave the root.

use std::io;
use std::path::{Path, PathBuf};

use futures_lite::AsyncWriteExt;

use super::http::{respond_text, response_head, Head};
use crate::transport::BoxWrite;

/// Answers a plain HTTP request (one that does not ask for a WebSocket) and closes.
pub(crate) async fn answer(
    head: &Head,
    root: Option<&Path>,
    write: &mut BoxWrite,
) -> io::Result<()> {
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        return respond_text(write, "405 Method Not Allowed", "GET only\n", false).await;
    }
    let Some(root) = root else {
        let body = "this port speaks the zserver protocol over WebSocket\n";
        return respond_text(write, "426 Upgrade Required", body, head_only).await;
    };
    let Some(relative) = relative_path(&head.path) else {
        return respond_text(write, "404 Not Found", "not found\n", head_only).await;
    };
    let root = root.to_path_buf();
    let found = blocking::unblock(move || open_within(&root, &relative)).await;
    let Some((file, length, content_type)) = found else {
        return respond_text(write, "404 Not Found", "not found\n", head_only).await;
    };
    write
        .write_all(&response_head("200 OK", content_type, length))
        .await?;
    if !head_only {
        // Streamed in chunks on the blocking pool: memory stays small whatever the size.
        let mut body = blocking::Unblock::new(file);
        futures_lite::io::copy(&mut body, &mut *write).await?;
    }
    write.close().await
}

/// The file a request path names, relative to the root: the query and fragment dropped,
/// `%XX` escapes decoded, `index.html` for a directory path. `None` for a path that is
/// not absolute, has `.`, `..` or empty segments, a backslash, a NUL or a bad escape.
fn relative_path(target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let rest = path.strip_prefix('/')?;
    let mut out = PathBuf::new();
    let mut segments: Vec<&str> = rest.split('/').collect();
    if segments.last() == Some(&"") {
        segments.pop();
        segments.push("index.html");
    }
    for segment in segments {
        let decoded = percent_decode(segment)?;
        if decoded.is_empty()
            || decoded == "."
            || decoded == ".."
            || decoded.contains(['/', '\\', '\0'])
        {
            return None;
        }
        out.push(decoded);
    }
    Some(out)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Opens `relative` under `root` if it is a regular file whose real path (symbolic links
/// resolved) is still inside the root's; returns it, its length and its content type.
fn open_within(root: &Path, relative: &Path) -> Option<(std::fs::File, u64, &'static str)> {
    let root = root.canonicalize().ok()?;
    let path = root.join(relative).canonicalize().ok()?;
    if !path.starts_with(&root) {
        return None;
    }
    let file = std::fs::File::open(&path).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file()
        .then(|| (file, meta.len(), content_type(&path)))
}

/// The content type for a file name's extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map" | "json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_into_the_root() {
        assert_eq!(relative_path("/"), Some(PathBuf::from("index.html")));
        assert_eq!(
            relative_path("/a/b.js?v=1#x"),
            Some(PathBuf::from("a/b.js"))
        );
        assert_eq!(
            relative_path("/docs/"),
            Some(PathBuf::from("docs/index.html"))
        );
        assert_eq!(
            relative_path("/my%20page.html"),
            Some(PathBuf::from("my page.html"))
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/a%2fb",
            "/a\\b",
            "/a//b",
            "/./a",
            "relative",
            "/%zz",
            "/%00",
            "/%",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        for (name, ty) in [
            ("a.html", "text/html; charset=utf-8"),
            ("a.JS", "text/javascript; charset=utf-8"),
            ("a.css", "text/css; charset=utf-8"),
            ("a.js.map", "application/json"),
            ("a.png", "image/png"),
            ("a.bin", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(name)), ty);
        }
    }
}
