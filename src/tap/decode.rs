//! Undoes a backend's `Content-Encoding` (gzip, deflate, br, zstd) as the body streams, so the tap reads plain bytes.

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

/// The decoded bytes, written by a decoder; refuses to grow past [`MAX_EXPANSION`] per piece.
#[derive(Default)]
struct Sink(Vec<u8>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_EXPANSION {
            return Err(io::Error::other("a piece decodes to more than 64 MiB"));
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
        Ok(Decoder { encoding, inner })
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
            self.inner = match zlib {
                true => Inner::Zlib(flate2::write::ZlibDecoder::new(Sink::default())),
                false => Inner::RawDeflate(flate2::write::DeflateDecoder::new(Sink::default())),
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
