//! Which partition a keyed record goes to: Kafka's default partitioner, so that keys land
//! on the same partition index as they would with a Kafka client given the same count.

use flotilla_types::PartitionId;

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`, reading the data
/// as little-endian 4-byte words. Returned as Java's signed `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition for `key` among `partitions` (> 0): `(murmur2(key) & 0x7fffffff) % n`,
/// as Kafka's `BuiltInPartitioner.partitionForKey`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) as u32) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_reference_vectors() {
        // org.apache.kafka.common.utils.UtilsTest.testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), want, "murmur2({:?})", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn short_inputs_cover_every_tail_length() {
        // Computed with an independent implementation of the Java algorithm (32-bit
        // wrapping arithmetic, unsigned shifts); "abc" above covers a 3-byte tail.
        assert_eq!(murmur2(b""), 275_646_681);
        assert_eq!(murmur2(b"hello"), 2_132_663_229);
        assert_eq!(partition_for_key(b"hello", 10), 2_132_663_229 % 10);
        // A negative hash: the sign bit is masked, not the absolute value taken.
        assert_eq!(partition_for_key(b"21", 7), (((-973_932_308i32) as u32) & 0x7fff_ffff) % 7);
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in 1..20u32 {
            for i in 0..200u32 {
                let key = i.to_be_bytes();
                let p = partition_for_key(&key, n);
                assert!(p < n);
                assert_eq!(p, partition_for_key(&key, n));
            }
        }
    }
}
