//! The Merkle tree over the audit chain, with RFC 9162 (Certificate Transparency 2.0) hashing:
//! leaf hash `SHA-256(0x00 || data)`, node hash `SHA-256(0x01 || left || right)`, the empty
//! tree `SHA-256("")`. A leaf's data is the row's canonical hash ([`super::row_hash`], 32 bytes),
//! leaf `i` is the row with `seq = i + 1`, and the tree size is the number of rows ever appended.
//!
//! The store keeps the hash of every *complete* subtree, addressed as [`Node`] `(level, idx)`:
//! the leaves `idx << level .. (idx + 1) << level`. Appending (see [`Frontier`]) writes one leaf
//! and at most one node per level. Every subtree that a root or a proof of any size needs is a
//! range `[a, b)` with `a` aligned to a power of two at least `b - a` ([`Range`]), so it is
//! the fold of at most 64 complete subtrees ([`parts`]): a proof costs O(log² n) stored nodes at
//! worst, O(log n) typically, and never a rescan.
//!
//! Pure: [`inclusion_ranges`] and [`consistency_ranges`] say which ranges a proof consists of,
//! [`range_hash`] combines their stored parts, and [`verify_inclusion`] /
//! [`verify_consistency`] are the RFC 9162 verification algorithms (2.1.3.2, 2.1.4.2).

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A complete subtree: `level` (its height) and `idx` (its position at that level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub level: u32,
    pub idx: u64,
}

/// The leaves `[start, end)` of one subtree of a proof (RFC 9162's `D[start:end]`).
pub type Range = (u64, u64);

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The leaf hash of an audit row, from its canonical hash (hex); `None` when that is not 32
/// bytes of hex (a row damaged outside the gateway).
pub fn row_leaf(row_hash_hex: &str) -> Option<Hash> {
    let bytes = hex::decode(row_hash_hex).ok()?;
    let data: [u8; 32] = bytes.try_into().ok()?;
    Some(leaf_hash(&data))
}

/// The root over `leaves` (leaf hashes), by RFC 9162's recursive definition (for tests and the
/// offline verifier's small trees; the store never rescans).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees of `[start, end)`, largest first (the range must be aligned as every
/// range of a proof is: `start` a multiple of a power of two at least `end - start`).
pub fn parts((start, end): Range) -> Vec<Node> {
    let mut out = Vec::new();
    let mut at = start;
    let len = end - start;
    for level in (0..64u32).rev() {
        if len & (1 << level) != 0 {
            out.push(Node {
                level,
                idx: at >> level,
            });
            at += 1 << level;
        }
    }
    out
}

/// The hash of a range from the hashes of its [`parts`] (in the same order): the parts fold from
/// the right, as the tree's right edge does. `None` for an empty range.
pub fn range_hash(part_hashes: &[Hash]) -> Option<Hash> {
    let (last, rest) = part_hashes.split_last()?;
    Some(rest.iter().rev().fold(*last, |acc, p| node_hash(p, &acc)))
}

/// The ranges of the inclusion proof of leaf `index` in the tree of `size` leaves, in proof
/// order (RFC 9162 2.1.3.1, `PATH(m, D[n])`).
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<Range> {
    let mut out = Vec::new();
    if index < size {
        path(index, 0, size, &mut out);
    }
    out
}

fn path(m: u64, lo: u64, hi: u64, out: &mut Vec<Range>) {
    let n = hi - lo;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, lo, lo + k, out);
        out.push((lo + k, hi));
    } else {
        path(m - k, lo + k, hi, out);
        out.push((lo, lo + k));
    }
}

/// The ranges of the consistency proof from the tree of `old` leaves to the tree of `new`
/// leaves, in proof order (RFC 9162 2.1.4.1, `PROOF(m, D[n])`); empty when `old` is 0 or equal
/// to `new`, or larger (no proof exists).
pub fn consistency_ranges(old: u64, new: u64) -> Vec<Range> {
    let mut out = Vec::new();
    if old > 0 && old < new {
        subproof(old, 0, new, true, &mut out);
    }
    out
}

fn subproof(m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Range>) {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push((lo, hi));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, lo, lo + k, complete, out);
        out.push((lo + k, hi));
    } else {
        subproof(m - k, lo + k, hi, false, out);
        out.push((lo, lo + k));
    }
}

/// RFC 9162 2.1.3.2: is `leaf` at `index` in the tree of `size` leaves with `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// RFC 9162 2.1.4.2: does the tree of `new` leaves with `new_root` extend the tree of `old`
/// leaves with `old_root`? The empty tree is extended by every tree.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    if old > new {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *old_root && sr == *new_root && s_n == 0
}

/// The right edge of a tree: the complete subtrees that cover its leaves, largest first (one per
/// set bit of the size). Appending a leaf yields the nodes that it completes, for the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash) of each complete subtree on the right edge, largest first.
    edge: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The frontier of the tree of `size` leaves from its [`Frontier::nodes_for`] hashes, in
    /// that order; `None` when their number does not fit the size.
    pub fn from_hashes(size: u64, hashes: &[Hash]) -> Option<Frontier> {
        let nodes = Frontier::nodes_for(size);
        (nodes.len() == hashes.len()).then(|| Frontier {
            size,
            edge: nodes
                .iter()
                .map(|n| n.level)
                .zip(hashes.iter().copied())
                .collect(),
        })
    }

    /// The stored nodes that make up the right edge of the tree of `size` leaves.
    pub fn nodes_for(size: u64) -> Vec<Node> {
        parts((0, size))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns every node it completes (the leaf itself first).
    pub fn push(&mut self, leaf: Hash) -> Vec<(Node, Hash)> {
        let index = self.size;
        let mut made = vec![(
            Node {
                level: 0,
                idx: index,
            },
            leaf,
        )];
        let mut carry = (0u32, leaf);
        while let Some(&(level, left)) = self.edge.last() {
            if level != carry.0 {
                break;
            }
            self.edge.pop();
            let level = level + 1;
            let hash = node_hash(&left, &carry.1);
            made.push((
                Node {
                    level,
                    idx: index >> level,
                },
                hash,
            ));
            carry = (level, hash);
        }
        self.edge.push(carry);
        self.size += 1;
        made
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let hashes: Vec<Hash> = self.edge.iter().map(|e| e.1).collect();
        range_hash(&hashes).unwrap_or_else(empty_root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Every range's hash from the leaves themselves (what the store's nodes hold).
    fn hash_of(all: &[Hash], r: Range) -> Hash {
        let ps: Vec<Hash> = parts(r)
            .iter()
            .map(|n| root(&all[(n.idx << n.level) as usize..((n.idx + 1) << n.level) as usize]))
            .collect();
        range_hash(&ps).unwrap()
    }

    #[test]
    fn ranges_are_the_recursive_definition() {
        let all = leaves(70);
        for size in 1..=70u64 {
            let r = root(&all[..size as usize]);
            for i in 0..size {
                let proof: Vec<Hash> = inclusion_ranges(i, size)
                    .into_iter()
                    .map(|rg| hash_of(&all, rg))
                    .collect();
                assert!(verify_inclusion(i, size, &all[i as usize], &proof, &r));
                let other = leaf_hash(b"other");
                assert!(!verify_inclusion(i, size, &other, &proof, &r));
            }
            for old in 1..=size {
                let old_root = root(&all[..old as usize]);
                let proof: Vec<Hash> = consistency_ranges(old, size)
                    .into_iter()
                    .map(|rg| hash_of(&all, rg))
                    .collect();
                assert!(
                    verify_consistency(old, size, &old_root, &r, &proof),
                    "{old}->{size}"
                );
                if old < size {
                    let wrong = leaf_hash(b"other");
                    assert!(!verify_consistency(old, size, &wrong, &r, &proof));
                }
            }
        }
    }

    #[test]
    fn frontier_matches_root_and_nodes() {
        let all = leaves(37);
        let mut f = Frontier::default();
        for (i, l) in all.iter().enumerate() {
            for (node, h) in f.push(*l) {
                let lo = (node.idx << node.level) as usize;
                let hi = ((node.idx + 1) << node.level) as usize;
                assert_eq!(h, root(&all[lo..hi]));
            }
            assert_eq!(f.root(), root(&all[..=i]));
            let again: Vec<Hash> = Frontier::nodes_for(f.size())
                .iter()
                .map(|n| root(&all[(n.idx << n.level) as usize..((n.idx + 1) << n.level) as usize]))
                .collect();
            assert_eq!(Frontier::from_hashes(f.size(), &again).unwrap(), f);
        }
    }
}
