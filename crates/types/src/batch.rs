//! The record-batch format: what a producer sends, what one Raft entry carries, and what a
//! fetch returns. Offsets are not in the batch: the partition assigns them when the entry
//! is applied (design decision 2, docs/decisions.md), so a record's bytes are written once.
//!
//! Layout, little-endian, format 2 (what every producer writes):
//!
//! ```text
//! magic u8 (=2) | crc32c u32 | attributes u16 | producer_id u64 | producer_epoch u16
//!     | base_sequence u32 | record_count u32 | records…
//! record: timestamp_ms u64 | key_len i32 (-1: no key) | key | value_len u32 | value
//!         | header_count u16 | (name_len u16 | name | value_len u32 | value)*
//! ```
//!
//! `attributes` bits 0–2 name the compression codec of the records section, with Kafka's
//! numbers: 0 none, 3 lz4 (a block with its uncompressed length first, u32), 4 zstd (one
//! frame); the other bits are 0. The records section, uncompressed, is at most
//! `limits::BATCH_BYTES_MAX` bytes. A compressed batch is stored and replicated as sent;
//! the node decompresses it once to verify it, the consumer to read it. `producer_id` 0 means "no producer": the batch is not
//! de-duplicated. Otherwise (`producer_id`, `producer_epoch`, `base_sequence`) is the
//! idempotent producer's stamp: `base_sequence` numbers the batch's first record, and
//! each record takes the next number, per producer and partition (Kafka's scheme).
//!
//! Format 1 (magic 1) has no attributes and no producer fields: `magic | crc32c |
//! record_count | records…`. It is still read. A batch of a newer format, or with a codec
//! this version does not know, is refused with [`BatchError::Unsupported`].
//!
//! The CRC32C covers every byte after the checksum field. It is computed by the
//! producer, verified by the node before the batch is proposed, and verified again by
//! the consumer after a fetch.

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits;

/// The batch format this version writes.
pub const FORMAT: u8 = 2;
const FORMAT_1: u8 = 1;
/// The header of the format written: magic, crc, attributes, producer id, epoch, base
/// sequence, record count.
pub const BATCH_HEADER_BYTES: usize = 1 + 4 + 2 + 8 + 2 + 4 + 4;
const FORMAT_1_HEADER_BYTES: usize = 1 + 4 + 4;
/// The producer id of a batch without a producer.
pub const NO_PRODUCER: u64 = 0;
const CODEC_MASK: u16 = 0b111;

/// How a producer compresses its batches' records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd];

    /// The codec number in a batch's attributes (Kafka's).
    pub fn codec(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    fn from_codec(codec: u16) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.codec() == codec)
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// `none`, `lz4` or `zstd`.
    pub fn parse(name: &str) -> Result<Compression, String> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| format!("unknown compression {name:?}: none, lz4 or zstd"))
    }

    fn compress(self, raw: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => raw.to_vec(),
            Compression::Lz4 => lz4_flex::block::compress_prepend_size(raw),
            Compression::Zstd => ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest),
        }
    }

    /// The records section of a batch compressed with this codec, never more than
    /// `max` bytes uncompressed, and never allocating more than that on the input's word.
    fn decompress(self, input: &[u8], max: usize) -> Result<Vec<u8>, BatchError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| BatchError::Malformed(format!("{what}: {e}"));
        let too_large =
            |n: usize| BatchError::TooLarge(format!("records of {n} bytes uncompressed, the limit is {max}"));
        match self {
            Compression::None => Ok(input.to_vec()),
            Compression::Lz4 => {
                let Some((len, block)) = input.split_first_chunk::<4>() else {
                    return Err(BatchError::Malformed("an lz4 block without its length".into()));
                };
                let len = u32::from_le_bytes(*len) as usize;
                if len > max {
                    return Err(too_large(len));
                }
                let mut out = vec![0u8; len];
                let n = lz4_flex::block::decompress_into(block, &mut out).map_err(|e| bad("lz4", &e))?;
                if n != len {
                    return Err(BatchError::Malformed(format!("lz4 block of {n} bytes, its header says {len}")));
                }
                Ok(out)
            }
            Compression::Zstd => {
                use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
                let mut input = input;
                let mut dec = FrameDecoder::new();
                dec.init(&mut input).map_err(|e| bad("zstd", &e))?;
                let mut out = Vec::new();
                loop {
                    dec.decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(256 * 1024))
                        .map_err(|e| bad("zstd", &e))?;
                    let finished = dec.is_finished();
                    if let Some(chunk) = dec.collect() {
                        out.extend_from_slice(&chunk);
                    }
                    if out.len() + dec.can_collect() > max {
                        return Err(too_large(out.len() + dec.can_collect()));
                    }
                    if finished {
                        break;
                    }
                }
                if !input.is_empty() {
                    return Err(BatchError::Malformed(format!("{} bytes after the zstd frame", input.len())));
                }
                Ok(out)
            }
        }
    }
}

/// An idempotent producer's stamp on a batch: who wrote it, in which epoch, and the
/// sequence number of its first record on this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ProducerStamp {
    pub id: u64,
    pub epoch: u16,
    pub base_sequence: u32,
}

impl ProducerStamp {
    /// The sequence number of the batch's last record, for a batch of `records`.
    pub fn last_sequence(&self, records: u32) -> u32 {
        self.base_sequence.wrapping_add(records.saturating_sub(1))
    }
}

/// One record, as a producer gives it and a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: u64,
}

impl Record {
    /// A record with a value only, timestamp 0 (the producer stamps it).
    pub fn value(value: impl Into<Bytes>) -> Record {
        Record { value: value.into(), ..Record::default() }
    }

    /// Bytes this record takes in a batch.
    pub fn encoded_len(&self) -> usize {
        8 + 4
            + self.key.as_ref().map_or(0, |k| k.len())
            + 4
            + self.value.len()
            + 2
            + self.headers.iter().map(|(k, v)| 2 + k.len() + 4 + v.len()).sum::<usize>()
    }
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch checksum mismatch: header says {expected:#010x}, contents give {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("malformed batch: {0}")]
    Malformed(String),
    #[error("batch too large: {0}")]
    TooLarge(String),
    #[error("unsupported batch: {0}")]
    Unsupported(String),
}

/// An encoded, checksummed batch of one or more records. Constructed only by `encode`
/// (which computes the checksum) or `decode` (which verifies it and the structure), so
/// a `RecordBatch` value is always well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    bytes: Bytes,
    count: u32,
    /// The records section, uncompressed (a slice of `bytes` when not compressed).
    records: Bytes,
}

/// Where a batch's records start: after its header, by format.
fn header_len(magic: u8) -> usize {
    if magic == FORMAT_1 { FORMAT_1_HEADER_BYTES } else { BATCH_HEADER_BYTES }
}

/// The producer stamp in the header of `bytes`, a batch already verified by
/// [`RecordBatch::decode`] or made by [`RecordBatch::encode`]; `None` for a batch without
/// a producer (or of format 1). Reads fixed offsets only, so the partition state machine
/// can call it on every batch it applies.
pub fn producer_of(bytes: &[u8]) -> Option<ProducerStamp> {
    if bytes.len() < BATCH_HEADER_BYTES || bytes[0] != FORMAT {
        return None;
    }
    let id = u64::from_le_bytes(bytes[7..15].try_into().expect("8 bytes"));
    if id == NO_PRODUCER {
        return None;
    }
    let epoch = u16::from_le_bytes(bytes[15..17].try_into().expect("2 bytes"));
    let base_sequence = u32::from_le_bytes(bytes[17..21].try_into().expect("4 bytes"));
    Some(ProducerStamp { id, epoch, base_sequence })
}

impl RecordBatch {
    /// Encodes `records` without a producer stamp. Fails if the batch breaks a limit.
    pub fn encode(records: &[Record]) -> Result<RecordBatch, BatchError> {
        RecordBatch::encode_as(records, None)
    }

    /// Encodes `records` stamped by an idempotent producer (`None`: no stamp). Fails if
    /// the batch breaks a limit, or the stamp uses the reserved producer id 0.
    pub fn encode_as(records: &[Record], producer: Option<ProducerStamp>) -> Result<RecordBatch, BatchError> {
        RecordBatch::encode_with(records, producer, Compression::None)
    }

    /// [`RecordBatch::encode_as`], the records compressed with `compression`. The limits
    /// apply to the uncompressed records.
    pub fn encode_with(
        records: &[Record],
        producer: Option<ProducerStamp>,
        compression: Compression,
    ) -> Result<RecordBatch, BatchError> {
        if producer.is_some_and(|p| p.id == NO_PRODUCER) {
            return Err(BatchError::Malformed("producer id 0 is reserved for batches without a producer".into()));
        }
        if records.is_empty() {
            return Err(BatchError::Malformed("a batch needs at least one record".into()));
        }
        if records.len() > limits::BATCH_RECORDS_MAX {
            return Err(BatchError::TooLarge(format!(
                "{} records, the limit is {}",
                records.len(),
                limits::BATCH_RECORDS_MAX
            )));
        }
        let len = BATCH_HEADER_BYTES + records.iter().map(Record::encoded_len).sum::<usize>();
        if len > limits::BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge(format!("{len} bytes, the limit is {}", limits::BATCH_BYTES_MAX)));
        }
        let mut buf = BytesMut::with_capacity(len);
        buf.put_u8(FORMAT);
        buf.put_u32_le(0); // checksum, filled in below
        buf.put_u16_le(compression.codec());
        let p = producer.unwrap_or(ProducerStamp { id: NO_PRODUCER, epoch: 0, base_sequence: 0 });
        buf.put_u64_le(p.id);
        buf.put_u16_le(p.epoch);
        buf.put_u32_le(p.base_sequence);
        buf.put_u32_le(records.len() as u32);
        for r in records {
            check_record(r)?;
            buf.put_u64_le(r.timestamp_ms);
            match &r.key {
                Some(k) => {
                    buf.put_i32_le(k.len() as i32);
                    buf.put_slice(k);
                }
                None => buf.put_i32_le(-1),
            }
            buf.put_u32_le(r.value.len() as u32);
            buf.put_slice(&r.value);
            buf.put_u16_le(r.headers.len() as u16);
            for (name, value) in &r.headers {
                buf.put_u16_le(name.len() as u16);
                buf.put_slice(name.as_bytes());
                buf.put_u32_le(value.len() as u32);
                buf.put_slice(value);
            }
        }
        assert_eq!(buf.len(), len, "encoded_len disagrees with the encoder");
        let (bytes, section) = if compression == Compression::None {
            let bytes = checksummed(buf);
            let section = bytes.slice(BATCH_HEADER_BYTES..);
            (bytes, section)
        } else {
            let section = buf.split_off(BATCH_HEADER_BYTES).freeze();
            buf.extend_from_slice(&compression.compress(&section));
            (checksummed(buf), section)
        };
        Ok(RecordBatch { bytes, count: records.len() as u32, records: section })
    }

    /// Verifies the checksum and the structure of `bytes` against every limit.
    pub fn decode(bytes: Bytes) -> Result<RecordBatch, BatchError> {
        if bytes.len() > limits::BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge(format!(
                "{} bytes, the limit is {}",
                bytes.len(),
                limits::BATCH_BYTES_MAX
            )));
        }
        let Some(&magic) = bytes.first() else {
            return Err(BatchError::Malformed("an empty batch".into()));
        };
        if magic > FORMAT {
            return Err(BatchError::Unsupported(format!(
                "batch format {magic} is newer than this node's ({FORMAT}); upgrade the node"
            )));
        }
        if magic != FORMAT && magic != FORMAT_1 {
            return Err(BatchError::Malformed(format!("unknown batch format {magic}")));
        }
        let header = header_len(magic);
        if bytes.len() < header {
            return Err(BatchError::Malformed(format!("{} bytes is shorter than a batch header", bytes.len())));
        }
        let expected = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(&bytes[5..]);
        if expected != actual {
            return Err(BatchError::Checksum { expected, actual });
        }
        let mut compression = Compression::None;
        if magic == FORMAT {
            let attributes = u16::from_le_bytes(bytes[5..7].try_into().expect("2 bytes"));
            let codec = attributes & CODEC_MASK;
            compression = Compression::from_codec(codec).ok_or_else(|| {
                BatchError::Unsupported(format!("compression codec {codec} is not known to this node"))
            })?;
            if attributes & !CODEC_MASK != 0 {
                return Err(BatchError::Unsupported(format!("batch attributes {attributes:#06x} are not known")));
            }
        }
        let count = u32::from_le_bytes(bytes[header - 4..header].try_into().expect("4 bytes"));
        if count == 0 || count as usize > limits::BATCH_RECORDS_MAX {
            return Err(BatchError::Malformed(format!(
                "record count {count} outside 1..={}",
                limits::BATCH_RECORDS_MAX
            )));
        }
        let records = match compression {
            Compression::None => bytes.slice(header..),
            c => Bytes::from(c.decompress(&bytes[header..], limits::BATCH_BYTES_MAX)?),
        };
        let batch = RecordBatch { bytes, count, records };
        // Walk every record once so that `records()` can never fail later.
        let mut n = 0;
        let mut cur = Cursor { buf: &batch.records };
        while !cur.buf.is_empty() {
            cur.record()?;
            n += 1;
        }
        if n != count {
            return Err(BatchError::Malformed(format!("header says {count} records, found {n}")));
        }
        Ok(batch)
    }

    /// The number of records.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Always false: a batch holds at least one record.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The encoded bytes, checksum included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The checksum stored in the header.
    pub fn crc(&self) -> u32 {
        u32::from_le_bytes(self.bytes[1..5].try_into().expect("4 bytes"))
    }

    /// The idempotent producer's stamp, if the batch has one.
    pub fn producer(&self) -> Option<ProducerStamp> {
        producer_of(&self.bytes)
    }

    /// How the records are compressed.
    pub fn compression(&self) -> Compression {
        if self.bytes[0] == FORMAT {
            let attributes = u16::from_le_bytes(self.bytes[5..7].try_into().expect("2 bytes"));
            Compression::from_codec(attributes & CODEC_MASK).expect("checked by decode or encode")
        } else {
            Compression::None
        }
    }

    /// The records, in order.
    pub fn records(&self) -> Vec<Record> {
        let mut cur = Cursor { buf: &self.records };
        let mut out = Vec::with_capacity(self.count as usize);
        while !cur.buf.is_empty() {
            out.push(cur.record_bytes(&self.records).expect("validated by decode or encode"));
        }
        out
    }
}

/// `buf` (a whole batch) with its checksum filled in.
fn checksummed(mut buf: BytesMut) -> Bytes {
    let crc = crc32c::crc32c(&buf[5..]);
    buf[1..5].copy_from_slice(&crc.to_le_bytes());
    buf.freeze()
}

fn check_record(r: &Record) -> Result<(), BatchError> {
    if let Some(k) = &r.key
        && k.len() > limits::RECORD_KEY_BYTES_MAX
    {
        return Err(BatchError::TooLarge(format!(
            "key of {} bytes, the limit is {}",
            k.len(),
            limits::RECORD_KEY_BYTES_MAX
        )));
    }
    if r.headers.len() > limits::RECORD_HEADERS_MAX {
        return Err(BatchError::TooLarge(format!(
            "{} headers, the limit is {}",
            r.headers.len(),
            limits::RECORD_HEADERS_MAX
        )));
    }
    for (name, _) in &r.headers {
        if name.len() > u16::MAX as usize {
            return Err(BatchError::TooLarge("header name over 65535 bytes".into()));
        }
    }
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], BatchError> {
        if self.buf.len() < n {
            return Err(BatchError::Malformed(format!("truncated {what}: need {n} bytes, have {}", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u16(&mut self, what: &str) -> Result<u16, BatchError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &str) -> Result<u32, BatchError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64, BatchError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    /// Validates one record; returns the byte ranges of its parts.
    fn record(&mut self) -> Result<RecordRanges<'a>, BatchError> {
        let timestamp_ms = self.u64("timestamp")?;
        let key_len = self.u32("key length")? as i32;
        let key = match key_len {
            -1 => None,
            n if n < 0 => return Err(BatchError::Malformed(format!("key length {n}"))),
            n if n as usize > limits::RECORD_KEY_BYTES_MAX => {
                return Err(BatchError::TooLarge(format!(
                    "key of {n} bytes, the limit is {}",
                    limits::RECORD_KEY_BYTES_MAX
                )));
            }
            n => Some(self.take(n as usize, "key")?),
        };
        let value_len = self.u32("value length")? as usize;
        let value = self.take(value_len, "value")?;
        let header_count = self.u16("header count")? as usize;
        if header_count > limits::RECORD_HEADERS_MAX {
            return Err(BatchError::TooLarge(format!(
                "{header_count} headers, the limit is {}",
                limits::RECORD_HEADERS_MAX
            )));
        }
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            let name_len = self.u16("header name length")? as usize;
            let name = self.take(name_len, "header name")?;
            if std::str::from_utf8(name).is_err() {
                return Err(BatchError::Malformed("header name is not UTF-8".into()));
            }
            let v_len = self.u32("header value length")? as usize;
            let v = self.take(v_len, "header value")?;
            headers.push((name, v));
        }
        Ok(RecordRanges { timestamp_ms, key, value, headers })
    }

    fn record_bytes(&mut self, whole: &Bytes) -> Result<Record, BatchError> {
        let r = self.record()?;
        Ok(Record {
            timestamp_ms: r.timestamp_ms,
            key: r.key.map(|k| whole.slice_ref(k)),
            value: whole.slice_ref(r.value),
            headers: r
                .headers
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n.to_vec()).expect("checked UTF-8"), whole.slice_ref(v)))
                .collect(),
        })
    }
}

type HeaderRanges<'a> = Vec<(&'a [u8], &'a [u8])>;

struct RecordRanges<'a> {
    timestamp_ms: u64,
    key: Option<&'a [u8]>,
    value: &'a [u8],
    headers: HeaderRanges<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record {
                key: Some(Bytes::from_static(b"k1")),
                value: Bytes::from_static(b"v1"),
                headers: vec![],
                timestamp_ms: 7,
            },
            Record {
                key: None,
                value: Bytes::from(vec![0u8; 1000]),
                headers: vec![("h".into(), Bytes::from_static(b"x"))],
                timestamp_ms: 8,
            },
            Record { key: Some(Bytes::new()), value: Bytes::new(), headers: vec![], timestamp_ms: 9 },
        ]
    }

    #[test]
    fn round_trip() {
        let b = RecordBatch::encode(&sample()).unwrap();
        assert_eq!(b.len(), 3);
        let d = RecordBatch::decode(b.bytes().clone()).unwrap();
        assert_eq!(d.records(), sample());
        assert_eq!(d.crc(), b.crc());
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let b = RecordBatch::encode(&sample()).unwrap();
        let bytes = b.bytes().to_vec();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(RecordBatch::decode(Bytes::from(bad)).is_err(), "flip at byte {i} not caught");
        }
    }

    #[test]
    fn truncation_is_caught() {
        let bytes = RecordBatch::encode(&sample()).unwrap().bytes().to_vec();
        for n in 0..bytes.len() {
            assert!(RecordBatch::decode(Bytes::copy_from_slice(&bytes[..n])).is_err(), "truncation to {n} not caught");
        }
    }

    #[test]
    fn lying_lengths_with_a_valid_checksum_are_refused() {
        // A well-checksummed batch whose key length points past the end.
        let mut buf = vec![FORMAT_1, 0, 0, 0, 0];
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&0u64.to_le_bytes());
        buf.extend_from_slice(&(i32::MAX).to_le_bytes());
        let crc = crc32c::crc32c(&buf[5..]);
        buf[1..5].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(RecordBatch::decode(Bytes::from(buf)), Err(BatchError::TooLarge(_))));
    }

    #[test]
    fn limits_are_enforced() {
        assert!(RecordBatch::encode(&[]).is_err());
        let big = Record::value(vec![0u8; limits::BATCH_BYTES_MAX]);
        assert!(matches!(RecordBatch::encode(&[big]), Err(BatchError::TooLarge(_))));
        let many = vec![Record::value("x"); limits::BATCH_RECORDS_MAX + 1];
        assert!(matches!(RecordBatch::encode(&many), Err(BatchError::TooLarge(_))));
    }

    #[test]
    fn the_producer_stamp_round_trips_and_is_covered_by_the_checksum() {
        let stamp = ProducerStamp { id: 42, epoch: 3, base_sequence: 1_000 };
        let b = RecordBatch::encode_as(&sample(), Some(stamp)).unwrap();
        let d = RecordBatch::decode(b.bytes().clone()).unwrap();
        assert_eq!(d.producer(), Some(stamp));
        assert_eq!(stamp.last_sequence(d.len()), 1_002);
        assert_eq!(d.records(), sample());
        assert_eq!(RecordBatch::encode(&sample()).unwrap().producer(), None);
        let reserved = ProducerStamp { id: NO_PRODUCER, ..stamp };
        assert!(RecordBatch::encode_as(&sample(), Some(reserved)).is_err());
    }

    /// A batch in format 1 (no attributes, no producer), written by earlier versions.
    fn format_1(records: &[Record]) -> Bytes {
        let v2 = RecordBatch::encode(records).unwrap();
        let mut buf = vec![FORMAT_1, 0, 0, 0, 0];
        buf.extend_from_slice(&v2.bytes()[BATCH_HEADER_BYTES - 4..]);
        let crc = crc32c::crc32c(&buf[5..]);
        buf[1..5].copy_from_slice(&crc.to_le_bytes());
        Bytes::from(buf)
    }

    #[test]
    fn format_1_batches_are_still_read() {
        let d = RecordBatch::decode(format_1(&sample())).unwrap();
        assert_eq!(d.records(), sample());
        assert_eq!(d.producer(), None);
    }

    #[test]
    fn newer_formats_and_unknown_codecs_are_refused_clearly() {
        let mut newer = RecordBatch::encode(&sample()).unwrap().bytes().to_vec();
        newer[0] = FORMAT + 1;
        let e = RecordBatch::decode(Bytes::from(newer)).unwrap_err();
        assert!(matches!(e, BatchError::Unsupported(_)) && e.to_string().contains("newer"), "{e}");

        let mut zstd = RecordBatch::encode(&sample()).unwrap().bytes().to_vec();
        zstd[5] = 5;
        let crc = crc32c::crc32c(&zstd[5..]);
        zstd[1..5].copy_from_slice(&crc.to_le_bytes());
        let e = RecordBatch::decode(Bytes::from(zstd)).unwrap_err();
        assert!(matches!(e, BatchError::Unsupported(_)) && e.to_string().contains("codec 5"), "{e}");
    }

    #[test]
    fn compressed_batches_read_back_as_sent_and_compressible_ones_shrink() {
        let records: Vec<Record> = (0..200)
            .map(|i| Record { key: Some(Bytes::from(format!("k{}", i % 7))), ..Record::value(format!("{i:>200}")) })
            .chain(sample())
            .collect();
        let plain = RecordBatch::encode(&records).unwrap();
        let stamp = Some(ProducerStamp { id: 3, epoch: 1, base_sequence: 9 });
        for c in [Compression::Lz4, Compression::Zstd] {
            let b = RecordBatch::encode_with(&records, stamp, c).unwrap();
            assert!(b.bytes().len() * 4 < plain.bytes().len(), "{c:?}: {} of {}", b.bytes().len(), plain.bytes().len());
            let d = RecordBatch::decode(b.bytes().clone()).unwrap();
            assert_eq!((d.records(), d.compression(), d.producer(), d.len()), (records.clone(), c, stamp, b.len()));
        }
    }

    #[test]
    fn compressed_junk_and_bombs_are_refused_without_allocating_their_claims() {
        let b = RecordBatch::encode_with(&sample(), None, Compression::Lz4).unwrap();
        // An lz4 length field claiming 4 GiB.
        let mut bomb = b.bytes().to_vec();
        bomb[BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&bomb[5..]);
        bomb[1..5].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(RecordBatch::decode(Bytes::from(bomb)), Err(BatchError::TooLarge(_))));
        // 8 MiB of zeros compress to a few hundred bytes; uncompressed they break the limit.
        let zeros = vec![0u8; 2 * limits::BATCH_BYTES_MAX];
        for c in [Compression::Lz4, Compression::Zstd] {
            let mut buf = RecordBatch::encode(&sample()).unwrap().bytes()[..BATCH_HEADER_BYTES].to_vec();
            buf[5..7].copy_from_slice(&c.codec().to_le_bytes());
            buf.extend_from_slice(&c.compress(&zeros));
            let crc = crc32c::crc32c(&buf[5..]);
            buf[1..5].copy_from_slice(&crc.to_le_bytes());
            let e = RecordBatch::decode(Bytes::from(buf)).unwrap_err();
            assert!(matches!(e, BatchError::TooLarge(_)), "{c:?}: {e}");
        }
        // Truncated compressed sections.
        for c in [Compression::Lz4, Compression::Zstd] {
            let bytes = RecordBatch::encode_with(&sample(), None, c).unwrap().bytes().to_vec();
            for n in BATCH_HEADER_BYTES..bytes.len() {
                let mut cut = bytes[..n].to_vec();
                let crc = crc32c::crc32c(&cut[5..]);
                cut[1..5].copy_from_slice(&crc.to_le_bytes());
                assert!(RecordBatch::decode(Bytes::from(cut)).is_err(), "{c:?} cut to {n}");
            }
        }
    }
}
