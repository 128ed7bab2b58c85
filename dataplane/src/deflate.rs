//! The state's compressor: raw deflate (RFC 1951), which every sidecar's inflater reads.
//!
//! Two encoders write it. States with repeats (JSON, text: keys and words that come back) go to
//! libdeflate at level 1, whose LZ77 replaces each repeat by a back-reference. States without
//! (tokens, ids, encrypted or base64 blobs) give LZ77 nothing to find, and libdeflate then writes a
//! block of literals under a Huffman code made for the state; but getting there costs it ~2.6 µs
//! whatever the state (its 128 KB hash table reset, the block's codes) plus a hash lookup per
//! byte: 5.9 µs on a 2 KB base64 state. [`literal_block`] writes that block directly, in under
//! half the time (2.7 µs), for the same bytes give or take a few. A cheap probe ([`repeats_pay`])
//! picks the encoder; a wrong pick costs some bytes or some microseconds, never a state.

use std::cell::RefCell;

use crate::cookie::with_reused;

thread_local! {
    /// One libdeflate compressor per thread: a fresh one allocates ~300 KB of tables, which costs
    /// more than compressing a 2 KB state.
    pub(crate) static DEFLATER: RefCell<Option<libdeflater::Compressor>> = const { RefCell::new(None) };
}

/// `data` as raw deflate, when that is smaller than `data`.
pub(crate) fn deflate_smaller(data: &[u8]) -> Option<Vec<u8>> {
    // States with repeats, and those whose code would be longer than deflate allows (rare, skewed
    // counts), go to libdeflate, which limits its codes' lengths.
    if !repeats_pay(data)
        && let Ok(block) = literal_block(data)
    {
        return block;
    }
    with_reused(&DEFLATER, new_libdeflater, |deflater| libdeflate_smaller(deflater, data))
}

pub(crate) fn new_libdeflater() -> libdeflater::Compressor {
    // Level 1, the fastest that compresses (`fastest()` is level 0: stored blocks only).
    libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).unwrap_or_default())
}

/// `data` deflated by libdeflate, when that is smaller than `data`: the output buffer has room for
/// `data.len() - 1` bytes only, so data that does not shrink is refused by the compressor.
pub(crate) fn libdeflate_smaller(deflater: &mut libdeflater::Compressor, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; data.len().checked_sub(1)?];
    let written = deflater.deflate_compress(data, &mut out).ok()?;
    out.truncate(written);
    Some(out)
}

/// Whether LZ77 would find enough repeats in `data` to beat a block of literals. Probes every
/// fourth position: a 4-byte window seen before at a position with the same offset modulo 4 is a
/// hit. Text and JSON repeat at every offset, so a quarter of their repeats still hit; in random
/// or base64 bytes a 4-byte window comes back about once in the whole state. One hit in 32 probes
/// (a few percent of the state repeated) says LZ77 pays.
pub(crate) fn repeats_pay(data: &[u8]) -> bool {
    const ORDER: u32 = 10;
    const EMPTY: u16 = u16::MAX;
    // Positions fit in the table's u16 only below 64 KB; a larger state is deflated in full.
    if data.len() >= usize::from(EMPTY) {
        return true;
    }
    let mut seen = [EMPTY; 1 << ORDER];
    let (mut probes, mut hits) = (0u32, 0u32);
    let window = |i: usize| data.get(i..i + 4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    for i in (0..data.len().saturating_sub(3)).step_by(4) {
        let w = window(i);
        let slot = &mut seen[(w.unwrap_or(0).wrapping_mul(0x9E37_79B1) >> (32 - ORDER)) as usize];
        if *slot != EMPTY && window(usize::from(*slot)) == w {
            hits += 1;
        }
        // i < 64 KB - 1: checked above.
        *slot = i as u16;
        probes += 1;
    }
    hits * 32 >= probes.max(1)
}

/// A Huffman code would need a codeword longer than deflate allows for it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CodeTooLong;

/// Literal/length symbols written: the 256 byte values and end-of-block (RFC 1951, 3.2.5).
const LITERALS: usize = 257;
const END_OF_BLOCK: usize = 256;
/// The longest codeword of the literal/length code, and of the code-length code (3.2.7).
const MAX_LITERAL_BITS: u8 = 15;
const MAX_PRECODE_BITS: u8 = 7;
/// The order in which the code-length code's lengths are written (3.2.7).
const PRECODE_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// `data` as one final deflate block of literals under a dynamic Huffman code (RFC 1951,
/// 3.2.7), or `None` when that block would not be smaller than `data` (it is not written then).
pub(crate) fn literal_block(data: &[u8]) -> Result<Option<Vec<u8>>, CodeTooLong> {
    let mut freq = [0u32; LITERALS];
    for &b in data {
        freq[usize::from(b)] += 1;
    }
    freq[END_OF_BLOCK] = 1;
    let lit_lens = code_lengths(&freq, MAX_LITERAL_BITS)?;
    // No distance is ever used; two codes of one bit each, as libdeflate writes: a complete code,
    // which every inflater accepts (some refuse an empty distance code).
    let dist_lens = [1u8, 1];
    let mut all_lens = [0u8; LITERALS + 2];
    all_lens[..LITERALS].copy_from_slice(&lit_lens);
    all_lens[LITERALS..].copy_from_slice(&dist_lens);
    let runs = run_lengths(&all_lens);
    let mut pre_freq = [0u32; 19];
    for &(sym, _) in &runs {
        pre_freq[usize::from(sym)] += 1;
    }
    let pre_lens = code_lengths(&pre_freq, MAX_PRECODE_BITS)?;
    let pre_count = PRECODE_ORDER.iter().rposition(|&s| pre_lens[s] != 0).map_or(4, |last| (last + 1).max(4));

    let extra_bits = |sym: u8| match sym {
        16 => 2,
        17 => 3,
        18 => 7,
        _ => 0,
    };
    let header_bits: u64 = 3 + 5 + 5 + 4 + 3 * pre_count as u64;
    let runs_bits: u64 = runs.iter().map(|&(s, _)| u64::from(pre_lens[usize::from(s)]) + extra_bits(s)).sum();
    let data_bits: u64 = freq.iter().zip(&lit_lens).map(|(&f, &l)| u64::from(f) * u64::from(l)).sum();
    let total_bytes = (header_bits + runs_bits + data_bits).div_ceil(8);
    if total_bytes >= data.len() as u64 {
        return Ok(None);
    }

    let lit_codes = canonical_codes(&lit_lens);
    let pre_codes = canonical_codes(&pre_lens);
    let mut out = BitWriter::for_bytes(total_bytes as usize);
    out.put(1, 1); // BFINAL: the last block
    out.put(2, 2); // BTYPE: dynamic Huffman codes
    out.put((LITERALS - 257) as u64, 5); // HLIT
    out.put((dist_lens.len() - 1) as u64, 5); // HDIST
    out.put((pre_count - 4) as u64, 4); // HCLEN
    out.flush();
    for &sym in &PRECODE_ORDER[..pre_count] {
        out.put(u64::from(pre_lens[sym]), 3);
        out.flush();
    }
    for &(sym, extra) in &runs {
        let s = usize::from(sym);
        out.put(u64::from(pre_codes[s]), pre_lens[s]);
        out.put(u64::from(extra), extra_bits(sym) as u8);
        out.flush();
    }
    out.put_bytes(data, &lit_codes, &lit_lens);
    out.put(u64::from(lit_codes[END_OF_BLOCK]), lit_lens[END_OF_BLOCK]);
    let block = out.finish();
    debug_assert_eq!(block.len() as u64, total_bytes);
    Ok(Some(block))
}

/// Huffman code lengths for `freq` (0 for an unused symbol), none over `limit`. At least two
/// symbols get a length, so the code is complete (a lone symbol gets a partner of the same
/// length, as zlib and libdeflate do): inflaters refuse incomplete code-length codes.
fn code_lengths<const N: usize>(freq: &[u32; N], limit: u8) -> Result<[u8; N], CodeTooLong> {
    // Leaves by weight, ties by symbol (the same input always gives the same code), packed into
    // one sortable key: weight above, symbol in the low 9 bits.
    let mut leaves = [0u64; LITERALS];
    let mut n = 0;
    for (s, &f) in freq.iter().enumerate() {
        if f > 0 {
            leaves[n] = u64::from(f) << 9 | s as u64;
            n += 1;
        }
    }
    for (s, &f) in freq.iter().enumerate() {
        if n >= 2 {
            break;
        }
        if f == 0 {
            leaves[n] = 1 << 9 | s as u64;
            n += 1;
        }
    }
    let leaves = &mut leaves[..n];
    leaves.sort_unstable();
    // Huffman's merge with two queues (leaves, then internal nodes in the order made, which is by
    // weight): node k < n is leaf k, node n + j is the j-th merge. A parent is made after its
    // children, so its index is above theirs.
    let mut weight = [0u64; 2 * LITERALS];
    let mut parent = [0u16; 2 * LITERALS];
    for (w, &leaf) in weight.iter_mut().zip(leaves.iter()) {
        *w = leaf >> 9;
    }
    let (mut next_leaf, mut next_node) = (0, n);
    for made in n..2 * n - 1 {
        let mut pair = [0usize; 2];
        for lightest in &mut pair {
            if next_leaf < n && (next_node >= made || weight[next_leaf] <= weight[next_node]) {
                *lightest = next_leaf;
                next_leaf += 1;
            } else {
                *lightest = next_node;
                next_node += 1;
            }
        }
        weight[made] = weight[pair[0]] + weight[pair[1]];
        parent[pair[0]] = made as u16;
        parent[pair[1]] = made as u16;
    }
    let mut depth = [0u8; 2 * LITERALS];
    for node in (0..2 * n - 2).rev() {
        depth[node] = depth[usize::from(parent[node])] + 1;
        if depth[node] > limit {
            return Err(CodeTooLong);
        }
    }
    let mut lens = [0u8; N];
    for (leaf, &key) in leaves.iter().enumerate() {
        lens[(key & 0x1ff) as usize] = depth[leaf];
    }
    Ok(lens)
}

/// The canonical codewords of `lens` (RFC 1951, 3.2.2), bit-reversed: deflate writes a codeword
/// from its most significant bit, into a stream filled from each byte's least significant bit.
fn canonical_codes<const N: usize>(lens: &[u8; N]) -> [u16; N] {
    let mut count = [0u16; 16];
    // Unused symbols (length 0) are most of them: counted, they would chain increments of one
    // counter through memory.
    for &l in lens.iter().filter(|&&l| l > 0) {
        count[usize::from(l)] += 1;
    }
    let mut next = [0u16; 16];
    let mut code = 0u16;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    let mut codes = [0u16; N];
    for (s, &l) in lens.iter().enumerate() {
        if l > 0 {
            let c = next[usize::from(l)];
            next[usize::from(l)] += 1;
            codes[s] = c.reverse_bits() >> (16 - l);
        }
    }
    codes
}

/// The code lengths as code-length symbols (RFC 1951, 3.2.7), each with its extra bits' value:
/// 0–15 a length, 16 the previous length 3–6 times, 17 zero 3–10 times, 18 zero 11–138 times.
fn run_lengths(lens: &[u8]) -> Vec<(u8, u8)> {
    let mut runs = Vec::with_capacity(64);
    let mut i = 0;
    while i < lens.len() {
        let len = lens[i];
        let run = lens[i..].iter().take_while(|&&l| l == len).count();
        i += run;
        let mut left = run;
        if len == 0 {
            while left >= 11 {
                let n = left.min(138);
                runs.push((18, (n - 11) as u8));
                left -= n;
            }
            if left >= 3 {
                runs.push((17, (left - 3) as u8));
                left = 0;
            }
        } else {
            runs.push((len, 0));
            left -= 1;
            while left >= 3 {
                let n = left.min(6);
                runs.push((16, (n - 3) as u8));
                left -= n;
            }
        }
        runs.extend(std::iter::repeat_n((len, 0), left));
    }
    runs
}

/// Bits into bytes, least significant bit first (RFC 1951, 3.1.1), in a buffer sized for the
/// whole block: a flush stores all 8 bytes of the bit buffer and keeps the bits of the last byte
/// not yet whole, without a branch on how many there are.
struct BitWriter {
    out: Vec<u8>,
    /// Whole bytes written.
    len: usize,
    bits: u64,
    count: u8,
}

impl BitWriter {
    fn for_bytes(bytes: usize) -> BitWriter {
        BitWriter { out: vec![0; bytes + 8], len: 0, bits: 0, count: 0 }
    }

    /// Appends the low `n` bits of `value`; at most 57 bits between flushes.
    fn put(&mut self, value: u64, n: u8) {
        self.bits |= value << self.count;
        self.count += n;
    }

    /// The codewords of `data`'s bytes under `codes` and `lens`: a literal block's loop, with the
    /// bit buffer in local variables (written back to the struct on every byte, it took ~2 % more
    /// of a request's instructions at a 2 KB state).
    fn put_bytes(&mut self, data: &[u8], codes: &[u16; LITERALS], lens: &[u8; LITERALS]) {
        let (mut bits, mut count, mut len) = (self.bits, u32::from(self.count), self.len);
        // Three codewords (15 bits at most each) fit the 64-bit buffer beside the 7 bits a flush
        // leaves: one flush per three bytes of state. Whole triples apart from the rest: a loop
        // of exactly three is unrolled (`chunks(3)` measured ~5 % slower at 2 KB).
        let mut chunks = data.chunks_exact(3);
        for chunk in &mut chunks {
            for &b in chunk {
                bits |= u64::from(codes[usize::from(b)]) << count;
                count += u32::from(lens[usize::from(b)]);
            }
            // `flush`'s steps, on the local copies (its count of whole bytes is `count / 8`).
            // Written out here: a helper shared with `flush`, taking them by reference, counted
            // 1-2 % more instructions a request at a 2 KB state, in two forms.
            self.out[len..len + 8].copy_from_slice(&bits.to_le_bytes());
            len += (count / 8) as usize;
            bits >>= count & !7;
            count &= 7;
        }
        (self.bits, self.count, self.len) = (bits, count as u8, len);
        for &b in chunks.remainder() {
            self.put(u64::from(codes[usize::from(b)]), lens[usize::from(b)]);
            self.flush();
        }
    }

    fn flush(&mut self) {
        // A block never outgrows the size it was made for (checked by the caller), so
        // `len + 8` is within the buffer; should it not be, the slice index panics, no overrun.
        self.out[self.len..self.len + 8].copy_from_slice(&self.bits.to_le_bytes());
        let whole = self.count / 8;
        self.len += usize::from(whole);
        self.bits >>= whole * 8;
        self.count -= whole * 8;
    }

    fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.out.truncate(self.len + usize::from(self.count).div_ceil(8));
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Inflated as every sidecar inflates a state (`cookie::inflate`), to at most 64 KB.
    fn inflate(block: &[u8]) -> Vec<u8> {
        crate::cookie::inflate(block, 1 << 16).expect("a valid deflate stream")
    }

    fn base64_noise(bytes: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % 64) as usize]
            })
            .collect()
    }

    fn json_session() -> Vec<u8> {
        let items: Vec<String> = (0..24)
            .map(|i| {
                format!(
                    r#"{{"sku":"SKU-{:05}","name":"Item number {i}","qty":{},"price_cents":{}}}"#,
                    i * 37,
                    i % 5 + 1,
                    199 + i * 50
                )
            })
            .collect();
        format!(
            r#"{{"user":{{"id":48213,"locale":"en-GB","theme":"dark"}},"cart":[{}],"step":"checkout"}}"#,
            items.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn base64_noise_takes_the_literal_block_at_libdeflates_size() {
        let state = [br#"{"count":17,"blob":""#.as_slice(), &base64_noise(2_000, 7), b"\"}"].concat();
        assert!(!repeats_pay(&state), "base64 noise has no repeats worth LZ77");
        let block = literal_block(&state).expect("codes fit").expect("smaller");
        assert_eq!(inflate(&block), state);
        let libdeflate = with_reused(&DEFLATER, new_libdeflater, |d| libdeflate_smaller(d, &state)).expect("smaller");
        assert!(
            block.len() <= libdeflate.len() + 8,
            "literal block {} vs libdeflate {}",
            block.len(),
            libdeflate.len()
        );
        assert!(block.len() * 100 < state.len() * 80, "6 bits a character: {} of {}", block.len(), state.len());
        assert_eq!(deflate_smaller(&state), Some(block));
    }

    #[test]
    fn json_with_repeats_goes_to_libdeflate() {
        let state = json_session();
        assert!(repeats_pay(&state), "JSON's keys repeat");
        let deflated = deflate_smaller(&state).expect("smaller");
        let literal = literal_block(&state).expect("codes fit").expect("smaller");
        assert!(deflated.len() * 10 < literal.len() * 8, "LZ77 pays: {} vs {}", deflated.len(), literal.len());
        assert_eq!(inflate(&deflated), state);
    }

    #[test]
    fn random_bytes_are_not_deflated() {
        let mut state = vec![0u8; 3_000];
        crate::random::fill(&mut state);
        assert!(!repeats_pay(&state));
        assert_eq!(literal_block(&state), Ok(None));
        assert_eq!(deflate_smaller(&state), None);
    }

    #[test]
    fn one_byte_value_and_few_symbols_make_complete_codes() {
        for state in [vec![b'a'; 300], b"ab".repeat(200), [vec![0u8; 299], vec![1]].concat()] {
            let block = literal_block(&state).expect("codes fit").expect("smaller");
            assert_eq!(inflate(&block), state);
        }
    }

    #[test]
    fn counts_that_would_need_codewords_over_15_bits_are_refused() {
        // Fibonacci counts make the deepest Huffman tree, one level per symbol: end-of-block's 1,
        // then 1, 2, 3, 5, … (each new subtree lighter than the next symbol).
        let (mut a, mut b) = (1usize, 2usize);
        let mut state = Vec::new();
        for sym in 0..20u8 {
            state.extend(std::iter::repeat_n(sym, a));
            (a, b) = (b, a + b);
        }
        assert_eq!(literal_block(&state), Err(CodeTooLong));
        // The whole compressor still deflates it (libdeflate limits its codes).
        let deflated = deflate_smaller(&state).expect("smaller");
        assert_eq!(inflate(&deflated), state);
    }

    #[test]
    fn states_past_the_probe_range_are_deflated_in_full() {
        assert!(repeats_pay(&vec![0u8; 70_000]));
    }

    proptest! {
        #[test]
        fn every_block_inflates_to_its_input(
            data in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>(), 0u8..8], 1..4_000),
        ) {
            if let Ok(Some(block)) = literal_block(&data) {
                prop_assert!(block.len() < data.len());
                prop_assert_eq!(inflate(&block), data.clone());
            }
            if let Some(deflated) = deflate_smaller(&data) {
                prop_assert!(deflated.len() < data.len());
                prop_assert_eq!(inflate(&deflated), data);
            }
        }
    }
}
