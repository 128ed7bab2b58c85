//! The state's compressor: raw deflate (RFC 1951), which every sidecar's inflater reads.
//!
//! A state is sealed on every response that changes it, so its compressor runs once a request;
//! states are small (a few hundred bytes to a few KB). libdeflate, made for large inputs, spent
//! 4.8 µs on a 218-byte JSON state at its fastest level (its 128 KB hash table reset, its block's
//! codes), more than the rest of a request's cookie work. Two encoders of our own write one block
//! each:
//!
//! - [`literal_block`] for states without repeats (tokens, ids, encrypted or base64 blobs), where
//!   LZ77 finds nothing: the bytes under a Huffman code made for them.
//! - [`lz77_block`] for states with repeats (JSON, text: keys and words that come back) under 2 KB:
//!   greedy LZ77 as libdeflate's fastest level does it (the same bytes out, give or take one), in
//!   a hash table sized to the state: 2.6 µs on that state, 5.3 against 6.8 on a 1.8 KB one.
//!
//! A cheap probe ([`repeats_pay`]) picks between them; a wrong pick costs some bytes or some
//! microseconds, never a state. libdeflate stays for what the two do not take: states with repeats
//! of 2 KB or more (its tighter loop over the state pays there), and counts whose code would need
//! codewords over deflate's 15 bits.
//!
//! Building a block's Huffman codes costs ~1.2 µs whatever the state's size. A session's next
//! state is mostly its last one, so the codes built for it are kept ([`deflate_smaller_for`], a
//! few hundred sessions a thread) and its next state is written under them when they take about
//! as many bits as fresh codes would ([`KeptCode`]).

use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    /// One libdeflate compressor per thread: a fresh one allocates ~300 KB of tables, which costs
    /// more than compressing a 2 KB state.
    pub(crate) static DEFLATER: RefCell<Option<libdeflater::Compressor>> = const { RefCell::new(None) };
}

/// `data` as raw deflate, when that is smaller than `data`.
pub(crate) fn deflate_smaller(data: &[u8]) -> Option<Vec<u8>> {
    deflate_smaller_with(data, &mut None)
}

/// [`deflate_smaller`] for a state of `session`: written under the codes of the session's last
/// state deflated on this thread when they fit it ([`KeptCode::data_bits`]), which saves building
/// them — about half of what a short state's deflate costs. The codes are a session's own: which
/// ones a state gets never depends on another session's state (a cookie's length would tell that
/// session's client something of the other's).
pub(crate) fn deflate_smaller_for(session: &str, data: &[u8]) -> Option<Vec<u8>> {
    let kept = KEPT_CODES.try_with(|cell| {
        let mut codes = cell.try_borrow_mut().ok()?;
        if let Some(kept) = codes.get_mut(session) {
            return Some(deflate_smaller_with(data, kept));
        }
        let mut kept = None;
        let deflated = deflate_smaller_with(data, &mut kept);
        if codes.len() >= KEPT_SESSIONS {
            // Any one out (the map's order is its random hash's): a bound, not a policy worth more
            // code; a session whose codes go builds them again on its next state.
            if let Some(out) = codes.keys().next().cloned() {
                codes.remove(&out);
            }
        }
        codes.insert(session.into(), kept);
        Some(deflated)
    });
    match kept {
        Ok(Some(deflated)) => deflated,
        _ => deflate_smaller(data),
    }
}

/// How many sessions' codes a thread keeps: ~1.1 KB each, under 1 MB in all.
const KEPT_SESSIONS: usize = 512;

thread_local! {
    /// The codes of the last state this thread deflated, by session ([`deflate_smaller_for`]).
    static KEPT_CODES: RefCell<HashMap<Box<str>, Option<Box<KeptCode>>>> = RefCell::new(HashMap::new());
}

/// [`deflate_smaller`], under `kept`'s codes when they fit `data`; `kept` then holds the codes the
/// block was written under (none when libdeflate wrote it).
pub(crate) fn deflate_smaller_with(data: &[u8], kept: &mut Option<Box<KeptCode>>) -> Option<Vec<u8>> {
    let ours = if data.len() >= MAX_OURS {
        None
    } else if !repeats_pay(data) {
        Some(literal_block_with(data, kept))
    } else if data.len() < LZ77_BELOW {
        Some(lz77_block_with(data, kept))
    } else {
        None
    };
    match ours {
        Some(Ok(block)) => block,
        // Longer states with repeats, states past our tables' positions, and counts whose code
        // would be longer than deflate allows (rare, skewed): libdeflate, which limits its codes.
        _ => {
            *kept = None;
            with_reused(&DEFLATER, new_libdeflater, |deflater| libdeflate_smaller(deflater, data))
        }
    }
}

/// Runs `f` with this thread's codec state from `slot` (made by `new` on first use). Should the
/// slot be unavailable (in use further up this thread's stack, or the thread ending), `f` gets a
/// fresh one: slower, same result.
pub(crate) fn with_reused<T, R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
    new: fn() -> T,
    mut f: impl FnMut(&mut T) -> R,
) -> R {
    let reused = slot.try_with(|cell| cell.try_borrow_mut().ok().map(|mut codec| f(codec.get_or_insert_with(new))));
    match reused {
        Ok(Some(result)) => result,
        _ => f(&mut new()),
    }
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
/// fourth position of a state of 1 KB or more (every position of a shorter one): a 4-byte window
/// seen before at a probed position is a hit. Text and JSON repeat at every offset, so a quarter
/// of their repeats still hit; in random or base64 bytes a 4-byte window comes back about once in
/// the whole state. One hit in 32 probes (a few percent of the state repeated) says LZ77 pays.
pub(crate) fn repeats_pay(data: &[u8]) -> bool {
    const ORDER: u32 = 10;
    const EMPTY: u16 = u16::MAX;
    // Positions fit in the table's u16 only below 64 KB; a larger state is deflated in full.
    if data.len() >= MAX_OURS {
        return true;
    }
    let mut seen = [EMPTY; 1 << ORDER];
    let (mut probes, mut hits) = (0u32, 0u32);
    let window = |i: usize| data.get(i..i + 4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    // A short state is probed at every position: a quarter of its few repeats may not reach one
    // hit in 32 (a 218-byte JSON cart did not, and took a block of literals 17 % longer).
    let step = if data.len() < 1024 { 1 } else { 4 };
    for i in (0..data.len().saturating_sub(3)).step_by(step) {
        let w = window(i);
        let slot = &mut seen[hash(w.unwrap_or(0), ORDER)];
        if *slot != EMPTY && window(usize::from(*slot)) == w {
            hits += 1;
        }
        // i < 64 KB - 1: checked above.
        *slot = i as u16;
        probes += 1;
    }
    hits * 32 >= probes.max(1)
}

/// The hash of a 4-byte window, `order` bits of it (Fibonacci hashing: the top bits of a product
/// with 2^32 / φ): the probe's table and LZ77's.
fn hash(word: u32, order: u32) -> usize {
    (word.wrapping_mul(0x9E37_79B1) >> (32 - order)) as usize
}

/// A Huffman code would need a codeword longer than deflate allows for it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CodeTooLong;

/// States this long or longer are not ours: a table's positions are `u16`s (`lz77_block`, and
/// `repeats_pay`'s probe).
pub(crate) const MAX_OURS: usize = u16::MAX as usize;
/// States with repeats this long or longer go to libdeflate: its loop over the state costs less a
/// byte than ours (~1.7 against ~4 ns on text), and from ~2 KB of text on that outweighs its fixed
/// cost (2 000 bytes of ARCHITECTURE.md: 7.6 µs either way; 3 000: 9.5 against 10.8).
const LZ77_BELOW: usize = 2048;
/// Literal/length symbols of a block of literals: the 256 byte values and end-of-block (RFC 1951,
/// 3.2.5); a block with back-references uses the length symbols after them too.
const LITERALS: usize = 257;
const LITERALS_AND_LENGTHS: usize = 286;
const DISTANCES: usize = 30;
const END_OF_BLOCK: usize = 256;
/// The longest codeword of the literal/length and distance codes, and of the code-length code
/// (3.2.7).
const MAX_CODE_BITS: u8 = 15;
const MAX_PRECODE_BITS: u8 = 7;
/// The order in which the code-length code's lengths are written (3.2.7).
const PRECODE_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// The distance code of a block that uses none: two codes of one bit each, as libdeflate writes:
/// a complete code, which every inflater accepts (some refuse an empty distance code).
const NO_DISTANCES: [u8; 2] = [1, 1];

/// The bits that symbols counted `freq` take under code lengths `lens` (extra bits apart).
fn coded_bits(freq: &[u32], lens: &[u8]) -> u64 {
    freq.iter().zip(lens).map(|(&f, &l)| u64::from(f) * u64::from(l)).sum()
}

/// `data` as one final deflate block of literals under a dynamic Huffman code (RFC 1951,
/// 3.2.7), or `None` when that block would not be smaller than `data` (it is not written then).
pub(crate) fn literal_block(data: &[u8]) -> Result<Option<Vec<u8>>, CodeTooLong> {
    literal_block_with(data, &mut None)
}

/// [`literal_block`] under `kept`'s codes when they fit; `kept` then holds the codes used.
fn literal_block_with(data: &[u8], kept: &mut Option<Box<KeptCode>>) -> Result<Option<Vec<u8>>, CodeTooLong> {
    let mut freq = [0u32; LITERALS];
    for &b in data {
        freq[usize::from(b)] += 1;
    }
    freq[END_OF_BLOCK] = 1;
    let (code, data_bits) = match reused(kept, false, &freq, &[], 0) {
        Some(reused) => reused,
        None => {
            let lit_lens = code_lengths(&freq, MAX_CODE_BITS)?;
            let header = BlockHeader::new(&lit_lens, &NO_DISTANCES)?;
            let data_bits = coded_bits(&freq, &lit_lens);
            let code = KeptCode::new(false, &lit_lens, &NO_DISTANCES, header);
            (keep(kept, code), data_bits)
        }
    };
    let total_bytes = (code.header_bits + data_bits).div_ceil(8);
    if total_bytes >= data.len() as u64 {
        return Ok(None);
    }
    let mut out = BitWriter::after_header(total_bytes as usize, code);
    out.put_bytes(data, &code.lit_codes, &code.lit_lens, code.longest_literal);
    out.put(u64::from(code.lit_codes[END_OF_BLOCK]), code.lit_lens[END_OF_BLOCK]);
    let block = out.finish();
    debug_assert_eq!(block.len() as u64, total_bytes);
    Ok(Some(block))
}

/// Codes built for a session's state, kept to write its next one ([`deflate_smaller_for`]): the
/// next state of a session is mostly the last one with a few bytes changed (a count, an item),
/// so its counts are close and the old codes about as short — without the code lengths, the
/// canonical codewords and the header's runs built again (~1.2 µs for any state, ~40 % of a
/// 2 KB state's deflate and more of a short one's). A state within the ~1.6 % they may cost of
/// a header limit can fit or not by its session's last state; the seal handles a refusal as any
/// state over the budget.
pub(crate) struct KeptCode {
    /// Made for a block with back-references (LZ77's), or for a block of literals.
    lz77: bool,
    lit_lens: [u8; LITERALS_AND_LENGTHS],
    lit_codes: [u16; LITERALS_AND_LENGTHS],
    dist_lens: [u8; DISTANCES],
    dist_codes: [u16; DISTANCES],
    /// The longest codeword of a byte (a block of literals' loop width).
    longest_literal: u8,
    /// The block header that describes them, written out (its last byte partly), and its bits.
    header: Vec<u8>,
    header_bits: u64,
    /// States written under them since.
    reuses: u32,
}

/// States written under a session's kept codes before they are built anew: however slowly a
/// session's states drift, their codes follow.
const MAX_REUSES: u32 = 64;

impl KeptCode {
    fn new(lz77: bool, lit_lens: &[u8], dist_lens: &[u8], header: BlockHeader) -> KeptCode {
        let mut lits = [0u8; LITERALS_AND_LENGTHS];
        lits[..lit_lens.len()].copy_from_slice(lit_lens);
        let mut dists = [0u8; DISTANCES];
        dists[..dist_lens.len()].copy_from_slice(dist_lens);
        let header_bits = header.bits();
        let mut written = BitWriter::for_bytes(header_bits.div_ceil(8) as usize);
        header.write(&mut written);
        KeptCode {
            lz77,
            lit_codes: canonical_codes(&lits),
            dist_codes: canonical_codes(&dists),
            longest_literal: lits[..LITERALS].iter().copied().max().unwrap_or(MAX_CODE_BITS),
            lit_lens: lits,
            dist_lens: dists,
            header: written.finish(),
            header_bits,
            reuses: 0,
        }
    }

    /// The data bits of a block counted `lit_freq` and `dist_freq` (with `extra_bits` of lengths
    /// and distances) under these codes; `None` when they do not fit it: made for the other kind
    /// of block, a symbol without a codeword, more than 1/[`REUSE_SLACK`] over the counts'
    /// entropy (which no code beats, a fresh one included), or reused [`MAX_REUSES`] times.
    fn data_bits(&self, lz77: bool, lit_freq: &[u32], dist_freq: &[u32], extra_bits: u64) -> Option<u64> {
        if self.lz77 != lz77 || self.reuses >= MAX_REUSES {
            return None;
        }
        let (mut bits, mut missing, mut entropy) = (0u64, false, 0u64);
        for (freq, lens) in [(lit_freq, &self.lit_lens[..]), (dist_freq, &self.dist_lens[..])] {
            let (mut symbols, mut sum_f_log_f) = (0u64, 0u64);
            for (&f, &l) in freq.iter().zip(lens) {
                if f > 0 {
                    bits += u64::from(f) * u64::from(l);
                    missing |= l == 0;
                    symbols += u64::from(f);
                    sum_f_log_f += f_log2_f(f);
                }
            }
            // Σ f·log2(n/f) = n·log2(n) − Σ f·log2(f), in 1/65 536ths of a bit.
            entropy += n_log2_n(symbols).saturating_sub(sum_f_log_f);
        }
        let close = (bits << 16) * REUSE_SLACK <= entropy * (REUSE_SLACK + 1);
        (!missing && close).then_some(bits + extra_bits)
    }
}

/// Kept codes write a state when they take at most 1/`REUSE_SLACK` more bits than its entropy
/// (counted to within ~0.1 %): a fresh Huffman code takes about the entropy (a base64 state's
/// ~0.3 % over it), so a reused one makes a cookie at most ~1.6 % longer than fresh codes would.
const REUSE_SLACK: u64 = 64;

/// log2(1 + i/256) in 1/65 536ths of a bit, rounded down (a square at a time: each squaring of
/// a number in [1, 2) doubles its logarithm, whose next bit is whether it reached 2).
const LOG2_FRACTION: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut x = ((256 + i as u64) << 30) / 256;
        let mut bit = 1 << 15;
        while bit > 0 {
            x = (x * x) >> 30;
            if x >= 2 << 30 {
                x >>= 1;
                table[i] |= bit;
            }
            bit >>= 1;
        }
        i += 1;
    }
    table
};

/// log2(n) in 1/65 536ths of a bit, rounded down to 8 bits of `n` after its highest (under
/// 0.006 bits off).
fn log2_fixed(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let k = 63 - n.leading_zeros();
    let fraction = if k >= 8 { n >> (k - 8) } else { n << (8 - k) } & 0xff;
    (u64::from(k) << 16) + u64::from(LOG2_FRACTION[fraction as usize])
}

/// f·log2(f) in 1/65 536ths of a bit.
fn f_log2_f(f: u32) -> u64 {
    u64::from(f) * log2_fixed(u64::from(f))
}

fn n_log2_n(n: u64) -> u64 {
    n * log2_fixed(n)
}

/// `kept`'s codes and the data bits under them, when they fit the block counted (see
/// [`KeptCode::data_bits`]), counted as one more reuse.
fn reused<'k>(
    kept: &'k mut Option<Box<KeptCode>>,
    lz77: bool,
    lit_freq: &[u32],
    dist_freq: &[u32],
    extra_bits: u64,
) -> Option<(&'k KeptCode, u64)> {
    let code = kept.as_deref_mut()?;
    let bits = code.data_bits(lz77, lit_freq, dist_freq, extra_bits)?;
    code.reuses += 1;
    Some((code, bits))
}

/// Keeps `code` in `kept` (in its box when it has one) and returns it.
fn keep(kept: &mut Option<Box<KeptCode>>, code: KeptCode) -> &KeptCode {
    match kept {
        Some(boxed) => {
            **boxed = code;
            boxed
        }
        None => kept.insert(Box::new(code)),
    }
}

/// The shortest and longest back-reference, and the farthest (RFC 1951, 3.2.5). Matches start at
/// 4 bytes: the hash covers 4.
const MIN_MATCH: usize = 4;
const MAX_MATCH: usize = 258;
const MAX_DISTANCE: usize = 32_768;
/// Length symbols 257–285: the shortest length of each and its extra bits (RFC 1951, 3.2.5).
const LENGTH_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
/// Distance symbols 0–29: the shortest distance of each and its extra bits.
const DISTANCE_BASE: [u16; DISTANCES] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DISTANCE_EXTRA: [u8; DISTANCES] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
/// The length symbol's index (0–28) of each length 3–258, by `length - 3`.
const LENGTH_CODE: [u8; 256] = {
    let mut table = [0u8; 256];
    let (mut code, mut i) = (0, 0);
    while i < 256 {
        while code + 1 < LENGTH_BASE.len() && LENGTH_BASE[code + 1] as usize <= i + 3 {
            code += 1;
        }
        table[i] = code as u8;
        i += 1;
    }
    table
};

/// The distance symbol of `distance` (1–32 768): two per power of two from 5 on.
fn distance_code(distance: usize) -> usize {
    let d = distance - 1;
    if d < 4 {
        return d;
    }
    let log = d.ilog2() as usize;
    2 * log + ((d >> (log - 1)) & 1)
}

/// A back-reference in a token: the top bit set, `length - 3` in bits 16–23, `distance - 1` in
/// bits 0–15. A literal is its byte.
const MATCH: u32 = 1 << 31;

/// `data` (shorter than [`MAX_OURS`]) as one final deflate block of literals and
/// back-references under dynamic Huffman codes, or `None` when that block would not be smaller.
///
/// Greedy LZ77, as libdeflate's fastest level: at each position, the hash of its next 4 bytes
/// names a bucket of the last two positions that hashed alike; the longer match of the two is
/// taken, as long as it goes, and the positions it covers are hashed too. The table has a bucket
/// a byte of state, rounded up to a power of two (4 bytes each, at least 512 buckets): a 2 KB
/// state clears 8 KB where libdeflate clears 128 KB. The table and the tokens are this thread's,
/// kept from one state to the next ([`LZ77_SCRATCH`]).
pub(crate) fn lz77_block(data: &[u8]) -> Result<Option<Vec<u8>>, CodeTooLong> {
    lz77_block_with(data, &mut None)
}

/// [`lz77_block`] under `kept`'s codes when they fit; `kept` then holds the codes used.
fn lz77_block_with(data: &[u8], kept: &mut Option<Box<KeptCode>>) -> Result<Option<Vec<u8>>, CodeTooLong> {
    with_reused(&LZ77_SCRATCH, Lz77Scratch::default, |scratch| lz77_block_in(data, scratch, kept))
}

thread_local! {
    /// The LZ77 table and tokens of this thread's last state: allocated anew for each state (8 KB
    /// zeroed and 8 KB for a 2 KB one), they took ~7 % of a request's instructions at a 1.5 KB
    /// JSON state, mostly in the allocator's path for blocks of that size.
    static LZ77_SCRATCH: RefCell<Option<Lz77Scratch>> = const { RefCell::new(None) };
}

#[derive(Default)]
struct Lz77Scratch {
    table: Vec<[u16; 2]>,
    tokens: Vec<u32>,
}

fn lz77_block_in(
    data: &[u8],
    scratch: &mut Lz77Scratch,
    kept: &mut Option<Box<KeptCode>>,
) -> Result<Option<Vec<u8>>, CodeTooLong> {
    debug_assert!(data.len() < MAX_OURS, "positions are u16s");
    let order = data.len().next_power_of_two().trailing_zeros().clamp(9, 15);
    // Position + 1 (0: none yet): `data` is shorter than u16::MAX, so every one fits.
    let table = &mut scratch.table;
    table.clear();
    table.resize(1 << order, [0u16; 2]);
    let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap_or_default());

    let tokens = &mut scratch.tokens;
    tokens.clear();
    tokens.reserve(data.len());
    let mut lit_freq = [0u32; LITERALS_AND_LENGTHS];
    let mut dist_freq = [0u32; DISTANCES];
    let mut extra_bits = 0u64;
    let last_word = data.len().saturating_sub(MIN_MATCH - 1);
    let mut i = 0;
    while i < last_word {
        let w = word(i);
        let h = hash(w, order);
        let bucket = table[h];
        table[h] = [(i + 1) as u16, bucket[0]];
        // The longer match of the bucket's two positions (the nearer one on a tie).
        let mut best = (0, 0);
        for candidate in bucket.map(usize::from) {
            if candidate > 0 && i + 1 - candidate <= MAX_DISTANCE && word(candidate - 1) == w {
                let from = candidate - 1;
                let length = MIN_MATCH + common_prefix(data, from + MIN_MATCH, i + MIN_MATCH, MAX_MATCH - MIN_MATCH);
                if length > best.0 {
                    best = (length, i - from);
                }
            }
        }
        if best.0 > 0 {
            let (length, distance) = best;
            let lc = usize::from(LENGTH_CODE[length - 3]);
            let dc = distance_code(distance);
            lit_freq[257 + lc] += 1;
            dist_freq[dc] += 1;
            extra_bits += u64::from(LENGTH_EXTRA[lc]) + u64::from(DISTANCE_EXTRA[dc]);
            tokens.push(MATCH | ((length - 3) as u32) << 16 | (distance - 1) as u32);
            for j in i + 1..(i + length).min(last_word) {
                let bucket = &mut table[hash(word(j), order)];
                *bucket = [(j + 1) as u16, bucket[0]];
            }
            i += length;
        } else {
            lit_freq[usize::from(data[i])] += 1;
            tokens.push(u32::from(data[i]));
            i += 1;
        }
    }
    for &b in &data[i.min(data.len())..] {
        lit_freq[usize::from(b)] += 1;
        tokens.push(u32::from(b));
    }
    lit_freq[END_OF_BLOCK] = 1;

    let (code, data_bits) = match reused(kept, true, &lit_freq, &dist_freq, extra_bits) {
        Some(reused) => reused,
        None => {
            let lit_lens = code_lengths(&lit_freq, MAX_CODE_BITS)?;
            let dist_lens = if dist_freq.iter().all(|&f| f == 0) {
                let mut none = [0u8; DISTANCES];
                none[..NO_DISTANCES.len()].copy_from_slice(&NO_DISTANCES);
                none
            } else {
                code_lengths(&dist_freq, MAX_CODE_BITS)?
            };
            // Trailing unused symbols are not written (HLIT, HDIST), down to the 257 and 1
            // deflate needs.
            let lit_count = lit_lens.iter().rposition(|&l| l != 0).map_or(LITERALS, |last| (last + 1).max(LITERALS));
            let dist_count = dist_lens.iter().rposition(|&l| l != 0).map_or(1, |last| last + 1);
            let header = BlockHeader::new(&lit_lens[..lit_count], &dist_lens[..dist_count])?;
            let data_bits = coded_bits(&lit_freq, &lit_lens) + coded_bits(&dist_freq, &dist_lens) + extra_bits;
            (keep(kept, KeptCode::new(true, &lit_lens, &dist_lens, header)), data_bits)
        }
    };
    let total_bytes = (code.header_bits + data_bits).div_ceil(8);
    if total_bytes >= data.len() as u64 {
        return Ok(None);
    }

    let (lit_codes, lit_lens, dist_codes, dist_lens) =
        (&code.lit_codes, &code.lit_lens, &code.dist_codes, &code.dist_lens);
    let mut out = BitWriter::after_header(total_bytes as usize, code);
    for &token in tokens.iter() {
        if token & MATCH == 0 {
            let b = token as usize;
            out.put(u64::from(lit_codes[b]), lit_lens[b]);
        } else {
            // At most 15 + 5 + 15 + 13 bits, with the 7 a flush leaves: within `put`'s 57.
            let length = ((token >> 16) & 0xff) as usize + 3;
            let distance = (token & 0xffff) as usize + 1;
            let (lc, dc) = (usize::from(LENGTH_CODE[length - 3]), distance_code(distance));
            out.put(u64::from(lit_codes[257 + lc]), lit_lens[257 + lc]);
            out.put((length - usize::from(LENGTH_BASE[lc])) as u64, LENGTH_EXTRA[lc]);
            out.put(u64::from(dist_codes[dc]), dist_lens[dc]);
            out.put((distance - usize::from(DISTANCE_BASE[dc])) as u64, DISTANCE_EXTRA[dc]);
        }
        out.flush();
    }
    out.put(u64::from(lit_codes[END_OF_BLOCK]), lit_lens[END_OF_BLOCK]);
    let block = out.finish();
    debug_assert_eq!(block.len() as u64, total_bytes);
    Ok(Some(block))
}

/// How many bytes (at most `max`) from `a` equal those from `b` (`a < b`; the run stops at the
/// end of `data`), eight at a time.
fn common_prefix(data: &[u8], a: usize, b: usize, max: usize) -> usize {
    let max = max.min(data.len().saturating_sub(b));
    let mut n = 0;
    while n + 8 <= max {
        let x = u64::from_le_bytes(data[a + n..a + n + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(data[b + n..b + n + 8].try_into().unwrap_or_default());
        if x != y {
            return n + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    while n < max && data[a + n] == data[b + n] {
        n += 1;
    }
    n
}

/// A dynamic block's header (RFC 1951, 3.2.7): its literal/length and distance codes' lengths,
/// as runs under a code-length code.
struct BlockHeader {
    lit_count: usize,
    dist_count: usize,
    runs: Vec<(u8, u8)>,
    pre_lens: [u8; 19],
    pre_codes: [u16; 19],
    /// The code-length code's lengths written, in `PRECODE_ORDER` (4–19).
    pre_count: usize,
}

impl BlockHeader {
    fn new(lit_lens: &[u8], dist_lens: &[u8]) -> Result<BlockHeader, CodeTooLong> {
        let mut all_lens = [0u8; LITERALS_AND_LENGTHS + DISTANCES];
        let all_lens = &mut all_lens[..lit_lens.len() + dist_lens.len()];
        all_lens[..lit_lens.len()].copy_from_slice(lit_lens);
        all_lens[lit_lens.len()..].copy_from_slice(dist_lens);
        let runs = run_lengths(all_lens);
        let mut pre_freq = [0u32; 19];
        for &(sym, _) in &runs {
            pre_freq[usize::from(sym)] += 1;
        }
        let pre_lens = code_lengths(&pre_freq, MAX_PRECODE_BITS)?;
        let pre_count = PRECODE_ORDER.iter().rposition(|&s| pre_lens[s] != 0).map_or(4, |last| (last + 1).max(4));
        Ok(BlockHeader {
            lit_count: lit_lens.len(),
            dist_count: dist_lens.len(),
            runs,
            pre_codes: canonical_codes(&pre_lens),
            pre_lens,
            pre_count,
        })
    }

    fn bits(&self) -> u64 {
        let fixed: u64 = 3 + 5 + 5 + 4 + 3 * self.pre_count as u64;
        let runs: u64 =
            self.runs.iter().map(|&(s, _)| u64::from(self.pre_lens[usize::from(s)]) + run_extra_bits(s)).sum();
        fixed + runs
    }

    fn write(&self, out: &mut BitWriter) {
        out.put(1, 1); // BFINAL: the last block
        out.put(2, 2); // BTYPE: dynamic Huffman codes
        out.put((self.lit_count - 257) as u64, 5); // HLIT
        out.put((self.dist_count - 1) as u64, 5); // HDIST
        out.put((self.pre_count - 4) as u64, 4); // HCLEN
        out.flush();
        // Flushed every few fields, not after each, within `put`'s 57 bits with the 7 a flush
        // leaves: 16 precode lengths of 3 bits (48), or 3 runs of at most 7 + 7 bits (42).
        for lens in PRECODE_ORDER[..self.pre_count].chunks(16) {
            for &sym in lens {
                out.put(u64::from(self.pre_lens[sym]), 3);
            }
            out.flush();
        }
        for runs in self.runs.chunks(3) {
            for &(sym, extra) in runs {
                let s = usize::from(sym);
                out.put(u64::from(self.pre_codes[s]), self.pre_lens[s]);
                out.put(u64::from(extra), run_extra_bits(sym) as u8);
            }
            out.flush();
        }
    }
}

/// The extra bits of a code-length symbol: 16 repeats the previous length, 17 and 18 zeros.
fn run_extra_bits(sym: u8) -> u64 {
    match sym {
        16 => 2,
        17 => 3,
        18 => 7,
        _ => 0,
    }
}

/// Huffman code lengths for `freq` (0 for an unused symbol), none over `limit`. At least two
/// symbols get a length, so the code is complete (a lone symbol gets a partner of the same
/// length, as zlib and libdeflate do): inflaters refuse incomplete code-length codes.
fn code_lengths<const N: usize>(freq: &[u32; N], limit: u8) -> Result<[u8; N], CodeTooLong> {
    // Leaves by weight, ties by symbol (the same input always gives the same code), packed into
    // one sortable key: weight above, symbol in the low 9 bits.
    let mut leaves = [0u64; N];
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
    // Huffman's merge with two queues: the leaves, and the internal nodes in the order made
    // (which is by weight). Internal node `j` is the j-th merge; a parent is made after its
    // children, so its index is above theirs. Every array is the alphabet's size: n leaves make
    // n - 1 internal nodes.
    let mut node_weight = [0u64; N];
    let mut leaf_parent = [0u16; N];
    let mut node_parent = [0u16; N];
    let (mut next_leaf, mut next_node) = (0, 0);
    for made in 0..n - 1 {
        let mut weight = 0;
        for _ in 0..2 {
            if next_leaf < n && (next_node >= made || leaves[next_leaf] >> 9 <= node_weight[next_node]) {
                weight += leaves[next_leaf] >> 9;
                leaf_parent[next_leaf] = made as u16;
                next_leaf += 1;
            } else {
                weight += node_weight[next_node];
                node_parent[next_node] = made as u16;
                next_node += 1;
            }
        }
        node_weight[made] = weight;
    }
    // The root (the last merge) is at depth 0; every other node one below its parent.
    let mut node_depth = [0u8; N];
    for j in (0..n - 2).rev() {
        node_depth[j] = node_depth[usize::from(node_parent[j])] + 1;
    }
    let mut lens = [0u8; N];
    for (leaf, &key) in leaves.iter().enumerate() {
        let depth = node_depth[usize::from(leaf_parent[leaf])] + 1;
        if depth > limit {
            return Err(CodeTooLong);
        }
        lens[(key & 0x1ff) as usize] = depth;
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
    // A symbol a length at most: never grown.
    let mut runs = Vec::with_capacity(lens.len());
    let mut i = 0;
    while i < lens.len() {
        let len = lens[i];
        let start = i;
        while i < lens.len() && lens[i] == len {
            i += 1;
        }
        let run = i - start;
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

/// How many codewords of at most `longest` bits fit the 64-bit buffer beside the 7 bits a flush
/// leaves: 3 of deflate's longest (15), 7 of 8 bits. No wider loop is kept for shorter codes: a
/// state's code is that short only when it uses few byte values, all about as often.
fn codewords_per_flush(longest: u8) -> usize {
    (57 / usize::from(longest.max(1))).clamp(3, 7)
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

    /// A block of `bytes` that starts with `code`'s header: copied whole, not written a run at
    /// a time.
    fn after_header(bytes: usize, code: &KeptCode) -> BitWriter {
        let mut out = BitWriter::for_bytes(bytes);
        let whole = (code.header_bits / 8) as usize;
        out.out[..whole].copy_from_slice(&code.header[..whole]);
        out.len = whole;
        out.count = (code.header_bits % 8) as u8;
        if out.count > 0 {
            out.bits = u64::from(code.header[whole]) & ((1 << out.count) - 1);
        }
        out
    }

    /// Appends the low `n` bits of `value`; at most 57 bits between flushes.
    fn put(&mut self, value: u64, n: u8) {
        self.bits |= value << self.count;
        self.count += n;
    }

    /// The codewords of `data`'s bytes under `codes` and `lens`, none longer than `longest` bits:
    /// a literal block's loop. Its cost is the flushes, so each takes as many codewords as the
    /// 64-bit buffer holds beside the 7 bits a flush leaves: 3 of 15 bits, 5 of the 10 a base64
    /// state's rarest characters take.
    fn put_bytes(
        &mut self,
        data: &[u8],
        codes: &[u16; LITERALS_AND_LENGTHS],
        lens: &[u8; LITERALS_AND_LENGTHS],
        longest: u8,
    ) {
        match codewords_per_flush(longest) {
            7 => self.put_bytes_by::<7>(data, codes, lens),
            6 => self.put_bytes_by::<6>(data, codes, lens),
            5 => self.put_bytes_by::<5>(data, codes, lens),
            4 => self.put_bytes_by::<4>(data, codes, lens),
            _ => self.put_bytes_by::<3>(data, codes, lens),
        }
    }

    /// [`Self::put_bytes`], `K` codewords a flush, with the bit buffer in local variables (written
    /// back to the struct on every byte, it took ~2 % more of a request's instructions at a 2 KB
    /// state).
    fn put_bytes_by<const K: usize>(
        &mut self,
        data: &[u8],
        codes: &[u16; LITERALS_AND_LENGTHS],
        lens: &[u8; LITERALS_AND_LENGTHS],
    ) {
        let (mut bits, mut count, mut len) = (self.bits, u32::from(self.count), self.len);
        // Whole runs of K apart from the rest: a loop of exactly K is unrolled (`chunks(3)`
        // measured ~5 % slower at 2 KB).
        let mut chunks = data.chunks_exact(K);
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

    /// Words from a small vocabulary in a pseudo-random order: text whose words come back.
    fn prose(bytes: usize, seed: u64) -> Vec<u8> {
        let words = [
            "the", "session", "state", "cookie", "sidecar", "pod", "of", "a", "is", "sealed", "restored", "when",
            "client", "request", "owner", "pool", "and", "to", "its", "key", "every", "response", "dies", "other",
        ];
        let mut x = seed | 1;
        let mut text = Vec::with_capacity(bytes + 16);
        while text.len() < bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
            text.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
        }
        text.truncate(bytes);
        text
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
    fn a_codec_in_use_further_up_the_stack_is_not_shared() {
        // A nested use of the same slot gets a fresh codec instead of a second borrow.
        let state = b"{\"count\":3}".repeat(50);
        let deflate = |slot: &mut libdeflater::Compressor| libdeflate_smaller(slot, &state);
        let nested = with_reused(&DEFLATER, new_libdeflater, |outer| {
            let inner = with_reused(&DEFLATER, new_libdeflater, deflate);
            (deflate(outer), inner)
        });
        assert!(nested.0.is_some());
        assert_eq!(nested.0, nested.1);
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
    fn json_with_repeats_takes_lz77_near_libdeflates_size() {
        let state = json_session();
        assert!(repeats_pay(&state), "JSON's keys repeat");
        let deflated = deflate_smaller(&state).expect("smaller");
        assert_eq!(Ok(Some(deflated.clone())), lz77_block(&state));
        assert_eq!(inflate(&deflated), state);
        let literal = literal_block(&state).expect("codes fit").expect("smaller");
        assert!(deflated.len() * 10 < literal.len() * 8, "LZ77 pays: {} vs {}", deflated.len(), literal.len());
        let libdeflate = with_reused(&DEFLATER, new_libdeflater, |d| libdeflate_smaller(d, &state)).expect("smaller");
        assert!(
            deflated.len() * 100 <= libdeflate.len() * 110,
            "within 10 % of libdeflate's level 1: {} vs {}",
            deflated.len(),
            libdeflate.len()
        );
    }

    #[test]
    fn text_of_2_kb_or_more_goes_to_libdeflate() {
        let text = prose(LZ77_BELOW, 5);
        let state = &text[..LZ77_BELOW];
        assert!(repeats_pay(state));
        let libdeflate = with_reused(&DEFLATER, new_libdeflater, |d| libdeflate_smaller(d, state));
        assert!(libdeflate.is_some());
        assert_eq!(deflate_smaller(state), libdeflate);
        let shorter = &text[..LZ77_BELOW - 1];
        assert_eq!(deflate_smaller(shorter), lz77_block(shorter).expect("codes fit"));
    }

    #[test]
    fn a_short_json_state_takes_lz77_and_short_noise_does_not() {
        let cart = br#"{"user":{"id":48213,"locale":"en-GB"},"cart":[{"sku":"SKU-00000","name":"Item number 0","qty":1,"price_cents":199},{"sku":"SKU-00037","name":"Item number 1","qty":2,"price_cents":249}]}"#;
        assert!(repeats_pay(cart));
        assert_eq!(deflate_smaller(cart), lz77_block(cart).expect("codes fit"));
        assert!(!repeats_pay(&base64_noise(200, 11)));
    }

    #[test]
    fn every_length_and_distance_code_round_trips() {
        // Repeats of every length 4–258 at distances from 1 to past 32 KB (only those within
        // 32 768 are matched), between bytes that do not repeat.
        let mut state = Vec::new();
        let noise = base64_noise(40_000, 3);
        let mut at = 0;
        for length in (4..=258).step_by(7).chain([255, 256, 257, 258]) {
            let distance = (length * 131) % 33_000 + 1;
            state.extend_from_slice(&noise[at..at + 64]);
            at += 64;
            let from = state.len().saturating_sub(distance);
            let run: Vec<u8> = state[from..].iter().copied().cycle().take(length).collect();
            state.extend(run);
        }
        state.extend_from_slice(&noise[..33_000]);
        state.extend_from_slice(&noise[..300]);
        let block = lz77_block(&state).expect("codes fit").expect("smaller");
        assert_eq!(inflate(&block), state);
        assert_eq!(distance_code(1), 0);
        assert_eq!(distance_code(4), 3);
        assert_eq!(distance_code(5), 4);
        assert_eq!(distance_code(24_577), 29);
        assert_eq!(distance_code(32_768), 29);
        for d in 1..=32_768 {
            let c = distance_code(d);
            assert!(d >= usize::from(DISTANCE_BASE[c]) && d - usize::from(DISTANCE_BASE[c]) < 1 << DISTANCE_EXTRA[c]);
        }
        for length in 3..=258 {
            let c = usize::from(LENGTH_CODE[length - 3]);
            let base = usize::from(LENGTH_BASE[c]);
            assert!(length >= base && length - base < 1 << LENGTH_EXTRA[c], "length {length}");
        }
    }

    #[test]
    fn a_run_of_one_byte_and_repeats_without_literals_make_complete_codes() {
        for state in [vec![b'a'; 3_000], b"abcd".repeat(500), b"0123456789".repeat(7)] {
            let block = lz77_block(&state).expect("codes fit").expect("smaller");
            assert_eq!(inflate(&block), state);
        }
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

    #[test]
    fn literal_blocks_inflate_at_every_flush_width() {
        // Counts halving from symbol to symbol make a code whose longest codeword is one bit more
        // with each symbol: every width of `put_bytes`, from 7 codewords a flush to 3.
        let mut widths = std::collections::BTreeSet::new();
        for symbols in 2..=15u32 {
            let data: Vec<u8> =
                (0..symbols).flat_map(|i| std::iter::repeat_n(b'a' + i as u8, 1 << (symbols - 1 - i))).collect();
            // A few symbols make too short a state for a block to be smaller.
            let Some(block) = literal_block(&data).expect("codes fit") else { continue };
            assert_eq!(inflate(&block), data, "{symbols} symbols");
            let mut freq = [0u32; LITERALS];
            for &b in &data {
                freq[usize::from(b)] += 1;
            }
            freq[END_OF_BLOCK] = 1;
            let longest = code_lengths(&freq, MAX_CODE_BITS).expect("codes fit").into_iter().max().unwrap_or(0);
            widths.insert(codewords_per_flush(longest));
        }
        assert_eq!(widths.into_iter().collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
    }

    /// A session's state `count` requests on: the same session with its count moved.
    fn next_state(state: &[u8], count: usize) -> Vec<u8> {
        [format!("{{\"count\":{count},").as_bytes(), state].concat()
    }

    #[test]
    fn a_sessions_next_state_is_written_under_its_kept_codes_near_a_fresh_codes_size() {
        let noise = [br#""blob":""#.as_slice(), &base64_noise(2_000, 7), b"\"}"].concat();
        let cart = json_session();
        for (kind, state) in [("noise", noise), ("cart", cart)] {
            let mut kept = None;
            let first = deflate_smaller_with(&next_state(&state, 0), &mut kept).expect("smaller");
            assert_eq!(inflate(&first), next_state(&state, 0));
            assert_eq!(kept.as_ref().map(|k| k.reuses), Some(0), "{kind}: built for the first state");
            for count in 1..=40 {
                let next = next_state(&state, count * 7);
                let block = deflate_smaller_with(&next, &mut kept).expect("smaller");
                assert_eq!(inflate(&block), next, "{kind}");
                assert_eq!(kept.as_ref().map(|k| k.reuses), Some(count as u32), "{kind}: written under the kept codes");
                let fresh = deflate_smaller(&next).expect("smaller");
                assert!(
                    block.len() * 64 <= fresh.len() * 65 + 64,
                    "{kind}: {} bytes under the kept codes against {} under fresh ones",
                    block.len(),
                    fresh.len()
                );
            }
        }
    }

    #[test]
    fn the_fixed_point_log2_is_within_its_rounding() {
        for n in (1..5_000u64).chain([65_535, 1 << 20, 123_456_789]) {
            let exact = (n as f64).log2() * 65_536.0;
            let fixed = log2_fixed(n) as f64;
            assert!(fixed <= exact + 1.0 && exact - fixed < 0.006 * 65_536.0, "log2({n}): {fixed} vs {exact}");
        }
    }

    #[test]
    fn kept_codes_are_built_anew_when_they_do_not_fit() {
        let noise = base64_noise(1_000, 3);
        let kept_after = |first: &[u8], next: &[u8]| {
            let mut kept = None;
            deflate_smaller_with(first, &mut kept).expect("smaller");
            let block = deflate_smaller_with(next, &mut kept).expect("smaller");
            assert_eq!(inflate(&block), next);
            kept.map(|k| (k.reuses, k.lz77))
        };
        // A byte the kept codes have no codeword for.
        assert_eq!(kept_after(&noise, &[noise.as_slice(), b"~"].concat()), Some((0, false)));
        // The same symbols, eight of them now most of the state: far over its entropy.
        let skewed: Vec<u8> =
            noise.iter().zip(base64_noise(1_000, 9)).map(|(&a, b)| if b < b'Q' { a } else { b'A' + a % 8 }).collect();
        assert!(skewed.iter().all(|b| noise.contains(b)), "no symbol without a codeword");
        assert_eq!(kept_after(&noise, &skewed), Some((0, false)));
        // The other kind of block.
        assert_eq!(kept_after(&noise, &json_session()), Some((0, true)));
        assert_eq!(kept_after(&json_session(), &noise), Some((0, false)));
        // A state libdeflate writes keeps no codes.
        assert_eq!(kept_after(&noise, &prose(3_000, 1)), None);
        // Reused MAX_REUSES times, then built anew.
        let mut kept = None;
        for count in 0..=MAX_REUSES as usize + 2 {
            deflate_smaller_with(&next_state(&noise, count), &mut kept).expect("smaller");
        }
        assert_eq!(kept.map(|k| k.reuses), Some(1));
    }

    #[test]
    fn a_session_never_gets_another_sessions_codes_and_a_thread_keeps_a_bounded_number() {
        let noise = base64_noise(1_500, 5);
        let other = [noise.as_slice(), b"ABCDEFGH"].concat();
        deflate_smaller_for("a", &noise);
        assert_eq!(deflate_smaller_for("b", &other), deflate_smaller(&other), "b's first state under fresh codes");
        for i in 0..KEPT_SESSIONS * 2 {
            deflate_smaller_for(&format!("session-{i}"), &noise);
        }
        assert_eq!(KEPT_CODES.with(|codes| codes.borrow().len()), KEPT_SESSIONS);
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
            if let Ok(Some(block)) = lz77_block(&data) {
                prop_assert!(block.len() < data.len());
                prop_assert_eq!(inflate(&block), data.clone());
            }
            if let Some(deflated) = deflate_smaller(&data) {
                prop_assert!(deflated.len() < data.len());
                prop_assert_eq!(inflate(&deflated), data.clone());
            }
        }

        #[test]
        fn a_block_under_kept_codes_inflates_to_its_input(
            first in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>(), 0u8..8], 1..3_000),
            next in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>(), 0u8..8], 1..3_000),
        ) {
            let mut kept = None;
            deflate_smaller_with(&first, &mut kept);
            if let Some(deflated) = deflate_smaller_with(&next, &mut kept) {
                prop_assert!(deflated.len() < next.len());
                prop_assert_eq!(inflate(&deflated), next);
            }
        }
    }
}
