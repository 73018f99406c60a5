//! Undoes a `Content-Encoding` (gzip, deflate, br, zstd): a backend's answer as it streams, so the tap reads plain
//! bytes, and a caller's compressed request body whole, within a size cap ([`decode_whole`]).

use std::io::{self, Write};

use bytes::Bytes;

/// Most bytes one compressed piece may expand to: a piece that decodes to more is treated as broken
/// (a compression bomb), not buffered.
pub const MAX_EXPANSION: usize = 64 << 20;

/// A `Content-Encoding` the gateway can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    /// `deflate` is the zlib format (RFC 9110 section 8.4.1.2); raw deflate, which some servers send
    /// instead, is recognised from its first bytes.
    Deflate,
    Brotli,
    Zstd,
}

impl Encoding {
    /// The coding a response header names: `Ok(None)` for none or `identity`, `Err` for one the gateway
    /// cannot undo (another coding, or several stacked).
    pub fn parse(value: &[u8]) -> Result<Option<Encoding>, UnknownEncoding> {
        let value = value.trim_ascii();
        let known = [
            (&b"gzip"[..], Encoding::Gzip),
            (b"x-gzip", Encoding::Gzip),
            (b"deflate", Encoding::Deflate),
            (b"br", Encoding::Brotli),
            (b"zstd", Encoding::Zstd),
        ];
        if value.is_empty() || value.eq_ignore_ascii_case(b"identity") {
            return Ok(None);
        }
        known
            .iter()
            .find(|(name, _)| value.eq_ignore_ascii_case(name))
            .map(|(_, e)| Some(*e))
            .ok_or(UnknownEncoding)
    }
}

/// A `Content-Encoding` the gateway cannot undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownEncoding;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not valid {0:?}: {1}")]
    Invalid(Encoding, io::Error),
}

/// The decoded bytes, written by a decoder; refuses to grow past its limit ([`MAX_EXPANSION`] per piece
/// unless set lower).
struct Sink(Vec<u8>, usize);

impl Default for Sink {
    fn default() -> Sink {
        Sink(Vec::new(), MAX_EXPANSION)
    }
}

/// The error a [`Sink`] refuses with: the bytes decoded reached the limit.
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the body decodes to more bytes than allowed")
    }
}

impl std::error::Error for OverLimit {}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > self.1 {
            return Err(io::Error::other(OverLimit));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Inner {
    Gzip(flate2::write::MultiGzDecoder<Sink>),
    Zlib(flate2::write::ZlibDecoder<Sink>),
    RawDeflate(flate2::write::DeflateDecoder<Sink>),
    /// `deflate` before its first two bytes (held here): zlib or raw is decided from them.
    Deflate(Vec<u8>),
    Brotli(Box<brotli::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

/// A streaming decoder for one response body.
pub struct Decoder {
    encoding: Encoding,
    inner: Inner,
    /// A limit set before `deflate`'s decoder was chosen.
    pending_limit: Option<usize>,
}

impl Decoder {
    pub fn new(encoding: Encoding) -> Result<Decoder, DecodeError> {
        let inner = match encoding {
            Encoding::Gzip => Inner::Gzip(flate2::write::MultiGzDecoder::new(Sink::default())),
            Encoding::Deflate => Inner::Deflate(Vec::new()),
            Encoding::Brotli => Inner::Brotli(Box::new(brotli::DecompressorWriter::new(
                Sink::default(),
                4096,
            ))),
            Encoding::Zstd => Inner::Zstd(
                zstd::stream::write::Decoder::new(Sink::default())
                    .map_err(|e| DecodeError::Invalid(encoding, e))?,
            ),
        };
        Ok(Decoder {
            encoding,
            inner,
            pending_limit: None,
        })
    }

    /// At most `bytes` decoded by the next piece (the default: [`MAX_EXPANSION`]).
    fn limit(&mut self, bytes: usize) {
        let sink = match &mut self.inner {
            Inner::Gzip(d) => d.get_mut(),
            Inner::Zlib(d) => d.get_mut(),
            Inner::RawDeflate(d) => d.get_mut(),
            Inner::Deflate(_) => {
                self.pending_limit = Some(bytes);
                return;
            }
            Inner::Brotli(d) => d.get_mut(),
            Inner::Zstd(d) => d.get_mut(),
        };
        sink.1 = bytes;
    }

    /// Decodes the next piece of the body; `end`: it is the last, and the stream must be complete.
    pub fn decode(&mut self, piece: &[u8], end: bool) -> Result<Bytes, DecodeError> {
        let invalid = |e| DecodeError::Invalid(self.encoding, e);
        let joined;
        let mut piece = piece;
        if let Inner::Deflate(held) = &mut self.inner {
            held.extend_from_slice(piece);
            if held.len() < 2 && !end {
                return Ok(Bytes::new());
            }
            joined = std::mem::take(held);
            // A zlib stream starts with a header whose first 16 bits are a multiple of 31.
            let zlib = joined.len() >= 2
                && joined[0] & 0x0f == 8
                && (u16::from(joined[0]) << 8 | u16::from(joined[1])) % 31 == 0;
            let sink = Sink(Vec::new(), self.pending_limit.unwrap_or(MAX_EXPANSION));
            self.inner = match zlib {
                true => Inner::Zlib(flate2::write::ZlibDecoder::new(sink)),
                false => Inner::RawDeflate(flate2::write::DeflateDecoder::new(sink)),
            };
            piece = &joined;
        }
        let out = match &mut self.inner {
            Inner::Gzip(d) => step(d, piece, end, |d| d.try_finish(), |d| d.get_mut()),
            Inner::Zlib(d) => step(d, piece, end, |d| d.try_finish(), |d| d.get_mut()),
            Inner::RawDeflate(d) => step(d, piece, end, |d| d.try_finish(), |d| d.get_mut()),
            Inner::Deflate(_) => Ok(Vec::new()),
            Inner::Brotli(d) => step(d.as_mut(), piece, end, |d| d.flush(), |d| d.get_mut()),
            Inner::Zstd(d) => step(d, piece, end, |d| d.flush(), |d| d.get_mut()),
        };
        out.map(Bytes::from).map_err(invalid)
    }
}

/// Why a whole body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WholeError {
    /// It decodes to more than the limit.
    #[error("the body decodes to more than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Invalid(#[from] DecodeError),
}

/// Pieces fed to the decoder at a time: what one piece may expand to is bounded by the limit anyway.
const WHOLE_PIECE: usize = 16 * 1024;

/// The whole of `body` decoded, refused once it passes `max` bytes (never holding more: no decompression
/// bomb), or when it is not valid or not complete.
pub fn decode_whole(encoding: Encoding, body: &[u8], max: usize) -> Result<Vec<u8>, WholeError> {
    let mut d = Decoder::new(encoding)?;
    let mut out = Vec::new();
    let mut pieces = body.chunks(WHOLE_PIECE).peekable();
    if pieces.peek().is_none() {
        out.extend_from_slice(&d.decode(&[], true)?);
    }
    while let Some(piece) = pieces.next() {
        d.limit(max.saturating_sub(out.len()));
        match d.decode(piece, pieces.peek().is_none()) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(DecodeError::Invalid(_, e)) if is_over_limit(&e) => {
                return Err(WholeError::TooLarge(max))
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A zstd decoder's flush at its end does not say whether the last frame was complete; its size does.
    if encoding == Encoding::Zstd {
        let mut rest = body;
        while !rest.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(rest)
                .ok()
                .filter(|&n| n > 0 && n <= rest.len())
                .ok_or_else(|| {
                    DecodeError::Invalid(encoding, io::Error::other("incomplete zstd frame"))
                })?;
            rest = &rest[n..];
        }
    }
    // A brotli stream's flush at its end does not say whether it was complete; its close does.
    if let Inner::Brotli(b) = &mut d.inner {
        b.close()
            .map_err(|e| DecodeError::Invalid(Encoding::Brotli, e))?;
        out.extend_from_slice(&std::mem::take(&mut b.get_mut().0));
    }
    Ok(out)
}

/// Whether `e` is a [`Sink`]'s refusal, passed up by the decoder.
fn is_over_limit(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<OverLimit>())
}

/// Writes `piece` into decoder `d`, finishing it at the end, and takes what it decoded so far.
fn step<D: Write>(
    d: &mut D,
    piece: &[u8],
    end: bool,
    finish: impl FnOnce(&mut D) -> io::Result<()>,
    sink: impl FnOnce(&mut D) -> &mut Sink,
) -> io::Result<Vec<u8>> {
    d.write_all(piece)?;
    if end {
        finish(d)?;
    }
    Ok(std::mem::take(&mut sink(d).0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TEXT: &[u8] = br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}

data: [DONE]

"#;

    fn encode(encoding: Encoding, raw: bool) -> Vec<u8> {
        match (encoding, raw) {
            (Encoding::Gzip, _) => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(TEXT).unwrap();
                e.finish().unwrap()
            }
            (Encoding::Deflate, false) => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(TEXT).unwrap();
                e.finish().unwrap()
            }
            (Encoding::Deflate, true) => {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(TEXT).unwrap();
                e.finish().unwrap()
            }
            (Encoding::Brotli, _) => {
                let mut out = Vec::new();
                {
                    let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    e.write_all(TEXT).unwrap();
                }
                out
            }
            (Encoding::Zstd, _) => zstd::encode_all(TEXT, 3).unwrap(),
        }
    }

    #[test]
    fn a_whole_body_decodes_within_its_cap_and_a_bomb_is_refused_early() {
        for (encoding, raw) in [
            (Encoding::Gzip, false),
            (Encoding::Deflate, false),
            (Encoding::Deflate, true),
            (Encoding::Brotli, false),
            (Encoding::Zstd, false),
        ] {
            let body = encode(encoding, raw);
            assert_eq!(decode_whole(encoding, &body, TEXT.len()).unwrap(), TEXT);
            assert!(
                matches!(
                    decode_whole(encoding, &body, TEXT.len() - 1),
                    Err(WholeError::TooLarge(_))
                ),
                "{encoding:?} raw={raw}"
            );
            let cut = &body[..body.len() - 3];
            assert!(
                matches!(
                    decode_whole(encoding, cut, 1 << 20),
                    Err(WholeError::Invalid(_))
                ),
                "{encoding:?} raw={raw}: a cut body"
            );
        }
        // 64 MiB of zeros in ~64 KiB of gzip: refused at the cap, never held.
        let zeros = vec![0u8; 1 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        let started = std::time::Instant::now();
        let err = decode_whole(Encoding::Gzip, &bomb, 4 << 20).unwrap_err();
        assert!(
            matches!(err, WholeError::TooLarge(n) if n == 4 << 20),
            "{err:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(matches!(
            decode_whole(Encoding::Zstd, b"not zstd at all", 100),
            Err(WholeError::Invalid(_))
        ));
    }

    #[test]
    fn every_coding_decodes_whatever_the_pieces() {
        let cases = [
            (Encoding::Gzip, false),
            (Encoding::Deflate, false),
            (Encoding::Deflate, true),
            (Encoding::Brotli, false),
            (Encoding::Zstd, false),
        ];
        for (encoding, raw) in cases {
            let body = encode(encoding, raw);
            for size in [1, 2, 7, body.len()] {
                let mut d = Decoder::new(encoding).unwrap();
                let mut out = Vec::new();
                let pieces: Vec<&[u8]> = body.chunks(size).collect();
                for (i, piece) in pieces.iter().enumerate() {
                    let last = i + 1 == pieces.len();
                    out.extend_from_slice(&d.decode(piece, last).unwrap());
                }
                assert_eq!(out, TEXT, "{encoding:?} raw={raw} in pieces of {size}");
            }
        }
    }

    #[test]
    fn garbage_and_bombs_are_errors_not_panics_or_gigabytes() {
        for encoding in [
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Brotli,
            Encoding::Zstd,
        ] {
            let mut d = Decoder::new(encoding).unwrap();
            let r = d.decode(b"\x1f\x8b this is not compressed at all", true);
            assert!(r.is_err() || r.is_ok_and(|b| b.len() < 64), "{encoding:?}");
        }
        let zeros = vec![0u8; MAX_EXPANSION + 1];
        let bomb = zstd::encode_all(&zeros[..], 3).unwrap();
        assert!(bomb.len() < 1 << 20);
        let mut d = Decoder::new(Encoding::Zstd).unwrap();
        assert!(d.decode(&bomb, true).is_err());
    }

    #[test]
    fn codings_are_named_as_in_headers() {
        assert_eq!(Encoding::parse(b"GZIP "), Ok(Some(Encoding::Gzip)));
        assert_eq!(Encoding::parse(b"br"), Ok(Some(Encoding::Brotli)));
        assert_eq!(Encoding::parse(b"identity"), Ok(None));
        assert_eq!(Encoding::parse(b""), Ok(None));
        assert_eq!(Encoding::parse(b"gzip, br"), Err(UnknownEncoding));
        assert_eq!(Encoding::parse(b"compress"), Err(UnknownEncoding));
    }
}
