//! One spooled record on disk: a frame (magic, payload length, CRC-32 of the payload) around the record's
//! fields, written with one vectored write and read back strictly: a torn or damaged frame is reported, never a panic.
//! Frames carry a version: a gateway reads the frames that the version before it left in a spool.

use std::fs::File;
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::path::Path;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};

use crate::usage::record::{CapturedHeaders, CapturedRecord, RawBody, RawTexts, TokenUsage};
use crate::usage::UsageRecord;

const MAGIC: [u8; 4] = *b"GUR1";
/// Magic, payload length (u32 LE), CRC-32 of the payload (u32 LE).
pub const HEADER: usize = 12;
/// The version written. 2 added the cost (an optional f64 after the key name) and the `usage_estimated` flag
/// (bit 3 of the flags, always 0 in version 1); a frame of version 1 reads as unpriced and not estimated.
/// 3 added the affinity key (an optional string after the cost); older frames read without one.
/// 4 added the request id and the node (two optional strings after the affinity key).
/// 5 added the cache write tokens (an optional i64 after the node); older frames read without them.
const VERSION: u8 = 5;
const OLDEST: u8 = 1;

/// Why a frame could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum Damaged {
    #[error("no frame starts here")]
    Magic,
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed record ({0})")]
    Malformed(&'static str),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Encodes `record` into `buf` (cleared first): the frame header and the record's fields, with its three large
/// texts (headers, request, response) left as slices that [`write`] puts after them. None when a text is too
/// long for the format (4 GiB) or the response is still to be made ([`CapturedRecord::settle`] makes it).
pub fn encode<'a>(record: &'a CapturedRecord, buf: &mut Vec<u8>) -> Option<[&'a [u8]; 3]> {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER]);
    let mut out = Out(buf);
    let r = &record.row;
    out.u8(VERSION);
    out.i64(r.time.timestamp());
    out.u32(r.time.timestamp_subsec_nanos());
    out.i64(i64::from(r.time.offset().local_minus_utc()));
    out.str(&r.ip)?;
    out.str(&r.model)?;
    out.str(&r.kind)?;
    let t = &r.tokens;
    for count in [t.prompt, t.completion, t.total, t.cached, t.reasoning] {
        out.opt_i64(count);
    }
    out.u8(u8::from(r.tool)
        | u8::from(r.multimodal) << 1
        | u8::from(r.stream) << 2
        | u8::from(r.usage_estimated) << 3);
    out.str(&r.headers)?;
    out.opt_str(r.request.as_deref())?;
    out.opt_str(r.response.as_deref())?;
    out.opt_str(r.backend.as_deref())?;
    out.opt_str(r.upstream_model.as_deref())?;
    out.u32(u32::from(r.status));
    out.u64(r.latency_ms);
    out.opt_u64(r.first_token_ms);
    out.u32(r.attempts);
    out.opt_str(r.error.as_deref())?;
    out.opt_str(r.key_name.as_deref())?;
    out.opt_f64(r.cost_usd);
    out.opt_str(r.affinity_key.as_deref())?;
    out.opt_str(r.request_id.as_deref())?;
    out.opt_str(r.node.as_deref())?;
    out.opt_i64(t.cache_write);
    let Some(raw) = record.raw.as_deref() else {
        out.u8(0);
        return seal(buf, [&[], &[], &[]]);
    };
    out.u8(1);
    out.u64(count(raw.max_body));
    let (omitted, max) = raw.headers.cut_state();
    out.u64(count(omitted));
    out.opt_u64(max.map(count));
    let headers = raw.headers.as_bytes();
    let request = raw.request.as_deref();
    let response = match &raw.response {
        None => None,
        Some(RawBody::Bytes(bytes)) => Some(&bytes[..]),
        Some(RawBody::Later(_)) => return None,
    };
    out.len(headers.len())?;
    out.opt_len(request.map(<[u8]>::len))?;
    out.opt_len(response.map(<[u8]>::len))?;
    seal(
        buf,
        [headers, request.unwrap_or(&[]), response.unwrap_or(&[])],
    )
}

/// Fills in the frame header of `buf` for a payload of its fields and `blobs`.
fn seal<'a>(buf: &mut [u8], blobs: [&'a [u8]; 3]) -> Option<[&'a [u8]; 3]> {
    let len = buf.len() - HEADER + blobs.iter().map(|b| b.len()).sum::<usize>();
    let len = u32::try_from(len).ok()?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[HEADER..]);
    for blob in blobs {
        crc.update(blob);
    }
    buf[..4].copy_from_slice(&MAGIC);
    buf[4..8].copy_from_slice(&len.to_le_bytes());
    buf[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    Some(blobs)
}

/// Writes a frame encoded by [`encode`] with as few system calls as the kernel allows (one, as a rule); returns
/// its length. On an error part of the frame may have been written: the caller cuts the file back.
pub fn write(file: &mut impl Write, head: &[u8], blobs: [&[u8]; 3]) -> io::Result<u64> {
    let mut slices = [
        IoSlice::new(head),
        IoSlice::new(blobs[0]),
        IoSlice::new(blobs[1]),
        IoSlice::new(blobs[2]),
    ];
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(count(total))
}

/// What the next read of a segment found.
#[derive(Debug)]
pub enum Next {
    /// A record, and the offset just past its frame.
    Record(Box<CapturedRecord>, u64),
    /// The end of the file.
    End,
    /// A last frame cut short (the process died while writing it), at this offset: the end.
    Torn(u64),
}

/// Reads the frames of a segment file in order.
pub struct Frames {
    file: BufReader<File>,
    at: u64,
    size: u64,
}

impl Frames {
    pub fn open(path: &Path) -> io::Result<Frames> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Frames {
            file: BufReader::with_capacity(64 * 1024, file),
            at: 0,
            size,
        })
    }

    /// The offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.at
    }

    /// The next record. Damage before the last frame is an error (what follows it cannot be trusted).
    pub fn read_next(&mut self) -> Result<Next, Damaged> {
        let left = self.size - self.at;
        if left == 0 {
            return Ok(Next::End);
        }
        if left < HEADER as u64 {
            return Ok(Next::Torn(self.at));
        }
        let mut header = [0; HEADER];
        self.file.read_exact(&mut header)?;
        if header[..4] != MAGIC {
            return Err(Damaged::Magic);
        }
        let len = u64::from(u32::from_le_bytes([
            header[4], header[5], header[6], header[7],
        ]));
        let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if len > left - HEADER as u64 {
            return Ok(Next::Torn(self.at));
        }
        let mut payload = vec![0; usize::try_from(len).map_err(|_| Damaged::Malformed("length"))?];
        self.file.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            // A torn last frame with a complete length can hold garbage too.
            if len == left - HEADER as u64 {
                return Ok(Next::Torn(self.at));
            }
            return Err(Damaged::Checksum);
        }
        let record = decode(&payload)?;
        self.at += HEADER as u64 + len;
        Ok(Next::Record(Box::new(record), self.at))
    }
}

/// The record of a frame's payload.
pub fn decode(payload: &[u8]) -> Result<CapturedRecord, Damaged> {
    let mut at = In(payload);
    let version = at.u8()?;
    if !(OLDEST..=VERSION).contains(&version) {
        return Err(Damaged::Malformed("version"));
    }
    let (secs, nanos, offset) = (at.i64()?, at.u32()?, at.i64()?);
    let offset = i32::try_from(offset)
        .ok()
        .and_then(FixedOffset::east_opt)
        .ok_or(Damaged::Malformed("offset"))?;
    let time = DateTime::from_timestamp(secs, nanos)
        .ok_or(Damaged::Malformed("time"))?
        .with_timezone(&offset);
    let (ip, model, kind) = (at.string()?, at.string()?, at.string()?);
    let tokens = TokenUsage {
        prompt: at.opt_i64()?,
        completion: at.opt_i64()?,
        total: at.opt_i64()?,
        cached: at.opt_i64()?,
        reasoning: at.opt_i64()?,
        cache_write: None,
    };
    let flags = at.u8()?;
    let mut row = UsageRecord {
        time,
        ip,
        model,
        kind,
        tokens,
        tool: flags & 1 != 0,
        multimodal: flags & 2 != 0,
        headers: at.string()?,
        request: at.opt_string()?,
        response: at.opt_string()?,
        backend: at.opt_string()?,
        upstream_model: at.opt_string()?,
        stream: flags & 4 != 0,
        status: u16::try_from(at.u32()?).map_err(|_| Damaged::Malformed("status"))?,
        latency_ms: at.u64()?,
        first_token_ms: at.opt_u64()?,
        attempts: at.u32()?,
        error: at.opt_string()?,
        key_name: at.opt_string()?,
        cost_usd: if version >= 2 { at.opt_f64()? } else { None },
        usage_estimated: flags & 8 != 0,
        affinity_key: if version >= 3 { at.opt_string()? } else { None },
        request_id: if version >= 4 { at.opt_string()? } else { None },
        node: if version >= 4 {
            at.opt_string()?.map(Into::into)
        } else {
            None
        },
    };
    if version >= 5 {
        row.tokens.cache_write = at.opt_i64()?;
    }
    if !at.flag()? {
        return at.end().map(|()| CapturedRecord { row, raw: None });
    }
    let max_body = at.size()?;
    let omitted = at.size()?;
    let max = at.opt_u64()?.map(size).transpose()?;
    let headers_len = at.len()?;
    let request_len = at.opt_len()?;
    let response_len = at.opt_len()?;
    let headers = at.take(headers_len)?.to_vec();
    let request = request_len.map(|n| at.take(n)).transpose()?;
    let response = response_len.map(|n| at.take(n)).transpose()?;
    at.end()?;
    let raw = RawTexts {
        headers: CapturedHeaders::from_parts(headers, omitted, max),
        request: request.map(Bytes::copy_from_slice),
        response: response.map(|b| RawBody::Bytes(Bytes::copy_from_slice(b))),
        max_body,
    };
    Ok(CapturedRecord {
        row,
        raw: Some(Box::new(raw)),
    })
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn size(n: u64) -> Result<usize, Damaged> {
    usize::try_from(n).map_err(|_| Damaged::Malformed("size"))
}

/// Little-endian fields; a text too long for a u32 length fails the record (None).
struct Out<'b>(&'b mut Vec<u8>);

impl Out<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) -> Option<()> {
        self.u32(u32::try_from(n).ok()?);
        Some(())
    }
    fn opt_len(&mut self, n: Option<usize>) -> Option<()> {
        match n {
            None => self.u8(0),
            Some(n) => {
                self.u8(1);
                self.len(n)?;
            }
        }
        Some(())
    }
    fn str(&mut self, s: &str) -> Option<()> {
        self.len(s.len())?;
        self.0.extend_from_slice(s.as_bytes());
        Some(())
    }
    fn opt_str(&mut self, s: Option<&str>) -> Option<()> {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s)?;
            }
        }
        Some(())
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.i64(v);
            }
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    /// The bits of the f64, so that it reads back exactly.
    fn opt_f64(&mut self, v: Option<f64>) {
        self.opt_u64(v.map(f64::to_bits));
    }
}

/// The reading side of [`Out`]: every read checks the bytes are there.
struct In<'b>(&'b [u8]);

impl<'b> In<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], Damaged> {
        if n > self.0.len() {
            return Err(Damaged::Malformed("short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Damaged> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn end(&self) -> Result<(), Damaged> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(Damaged::Malformed("trailing bytes")),
        }
    }
    fn u8(&mut self) -> Result<u8, Damaged> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, Damaged> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Damaged> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, Damaged> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn size(&mut self) -> Result<usize, Damaged> {
        size(self.u64()?)
    }
    fn len(&mut self) -> Result<usize, Damaged> {
        size(u64::from(self.u32()?))
    }
    fn flag(&mut self) -> Result<bool, Damaged> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Damaged::Malformed("flag")),
        }
    }
    fn opt_len(&mut self) -> Result<Option<usize>, Damaged> {
        self.flag()?.then(|| self.len()).transpose()
    }
    fn string(&mut self) -> Result<String, Damaged> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        let text = std::str::from_utf8(bytes).map_err(|_| Damaged::Malformed("text"))?;
        Ok(text.to_owned())
    }
    fn opt_string(&mut self) -> Result<Option<String>, Damaged> {
        self.flag()?.then(|| self.string()).transpose()
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, Damaged> {
        self.flag()?.then(|| self.i64()).transpose()
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, Damaged> {
        self.flag()?.then(|| self.u64()).transpose()
    }
    fn opt_f64(&mut self) -> Result<Option<f64>, Damaged> {
        Ok(self.opt_u64()?.map(f64::from_bits))
    }
}
