//! N-tuple patterns with symmetry sharing and per-phase weight tables.
//!
//! A *shape* is an ordered list of squares. Its instances are its images under
//! the 8 symmetries of the board (duplicates by square set dropped); every
//! instance of a shape reads and writes the same table, so what is learnt in
//! one corner holds in all four. A pattern's index is the base-3 number of its
//! cells (0 empty, 1 side to move, 2 other side), first square least
//! significant. Each *phase* (a range of disc counts) has its own tables.

use crate::board::Board;
use crate::error::EngineError;

/// One shape of the pattern set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// A name for reports (`corner3x3`).
    pub name: String,
    /// Squares in base orientation, in index order.
    pub squares: Vec<u8>,
}

/// The most squares a shape may have (3^12 entries per table).
pub const MAX_SHAPE_SQUARES: usize = 12;

/// Most instances in a pattern set (shapes x 8 symmetries; the systematic
/// `straight2` set has 210). An instance's number must fit a `u8`.
pub const MAX_INSTANCES: usize = 256;

/// A pattern set expanded into instances and per-square update lists.
#[derive(Clone, Debug)]
pub struct PatternSet {
    /// The shapes, in table order.
    pub shapes: Vec<Shape>,
    /// For each instance: its shape and its squares (ordered like the shape's).
    pub instances: Vec<(usize, Vec<u8>)>,
    /// Offset of each shape's table within a phase.
    pub offsets: Vec<usize>,
    /// Weights per phase: all tables plus one bias.
    pub phase_len: usize,
    feat_start: [u16; 65],
    feat_inst: Vec<u8>,
    feat_pow: Vec<u32>,
    inst_base: Vec<u32>,
    /// Maps a within-phase offset to its symmetry class representative.
    canon: Vec<u32>,
}

fn transform(sq: u8, t: usize) -> u8 {
    let (r, c) = (sq / 8, sq % 8);
    let (r, c) = match t {
        0 => (r, c),
        1 => (r, 7 - c),
        2 => (7 - r, c),
        3 => (7 - r, 7 - c),
        4 => (c, r),
        5 => (c, 7 - r),
        6 => (7 - c, r),
        _ => (7 - c, 7 - r),
    };
    r * 8 + c
}

/// For each index of an `n`-square shape, the smallest index among its images
/// under the shape's self-symmetries (`perms[t][k]`: where cell `k` goes).
fn canonical_table(n: usize, perms: &[Vec<usize>]) -> Vec<u32> {
    let size = 3usize.pow(n as u32);
    let pow: Vec<usize> = (0..n).map(|k| 3usize.pow(k as u32)).collect();
    (0..size)
        .map(|idx| {
            let mut best = idx;
            for perm in perms {
                let mut image = 0;
                for k in 0..n {
                    image += (idx / pow[k] % 3) * pow[perm[k]];
                }
                best = best.min(image);
            }
            best as u32
        })
        .collect()
}

/// The default shapes: Logistello/Edax-class edges, corners, lines and diagonals.
#[must_use]
pub fn default_shapes() -> Vec<Shape> {
    let s = |name: &str, squares: &[u8]| Shape {
        name: name.into(),
        squares: squares.to_vec(),
    };
    vec![
        s("corner3x3", &[0, 1, 2, 8, 9, 10, 16, 17, 18]),
        s("corner2x5", &[0, 1, 2, 3, 4, 8, 9, 10, 11, 12]),
        s("edge2x", &[0, 1, 2, 3, 4, 5, 6, 7, 9, 14]),
        s("line2", &[8, 9, 10, 11, 12, 13, 14, 15]),
        s("line3", &[16, 17, 18, 19, 20, 21, 22, 23]),
        s("line4", &[24, 25, 26, 27, 28, 29, 30, 31]),
        s("diag8", &[0, 9, 18, 27, 36, 45, 54, 63]),
        s("diag7", &[1, 10, 19, 28, 37, 46, 55]),
        s("diag6", &[2, 11, 20, 29, 38, 47]),
        s("diag5", &[3, 12, 21, 30, 39]),
        s("diag4", &[4, 13, 22, 31]),
    ]
}

/// A small set for quick experiments: corners, edges and the main diagonal.
#[must_use]
pub fn small_shapes() -> Vec<Shape> {
    let all = default_shapes();
    all.into_iter()
        .filter(|s| matches!(s.name.as_str(), "corner3x3" | "edge2x" | "diag8"))
        .collect()
}

/// Every placement of a `rows` × `cols` rectangle, one shape per class of
/// placements equal under the board's symmetries (Jaśkowski's systematic
/// n-tuple networks: many short tuples covering the whole board).
#[must_use]
pub fn rectangle_shapes(rows: u8, cols: u8) -> Vec<Shape> {
    let mut placements = Vec::new();
    for r in 0..=8 - rows {
        for c in 0..=8 - cols {
            let sq: Vec<u8> = (0..rows)
                .flat_map(|i| (0..cols).map(move |j| (r + i) * 8 + c + j))
                .collect();
            placements.push(sq);
        }
    }
    classes(&format!("rect{rows}x{cols}"), placements)
}

/// Every straight 2-tuple: each pair of horizontally, vertically or
/// diagonally adjacent squares (210 placements), one shape per symmetry class
/// (32 classes of 9 entries: the 288 weights of Jaśkowski's "all 2-tuples"
/// network, 2014).
#[must_use]
pub fn straight2_shapes() -> Vec<Shape> {
    let mut placements = Vec::new();
    for r in 0..8i8 {
        for c in 0..8i8 {
            for (dr, dc) in [(0, 1), (1, 0), (1, 1), (1, -1)] {
                let (r2, c2) = (r + dr, c + dc);
                if (0..8).contains(&r2) && (0..8).contains(&c2) {
                    placements.push(vec![(r * 8 + c) as u8, (r2 * 8 + c2) as u8]);
                }
            }
        }
    }
    classes("pair", placements)
}

/// One shape per symmetry class of `placements` (the first placement of each).
fn classes(prefix: &str, placements: Vec<Vec<u8>>) -> Vec<Shape> {
    let key = |sq: &[u8]| {
        (0..8)
            .map(|t| {
                let mut k: Vec<u8> = sq.iter().map(|&q| transform(q, t)).collect();
                k.sort_unstable();
                k
            })
            .min()
            .unwrap_or_default()
    };
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for sq in placements {
        let k = key(&sq);
        if !seen.contains(&k) {
            seen.push(k);
            out.push(Shape {
                name: format!("{prefix}_{}", sq[0]),
                squares: sq,
            });
        }
    }
    out
}

impl PatternSet {
    /// Expands `shapes` into instances under the board's 8 symmetries.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] for an empty set, a shape with 0 or more
    /// than 12 squares, a square outside 0..64 or a repeated square.
    pub fn new(shapes: Vec<Shape>) -> Result<PatternSet, EngineError> {
        if shapes.is_empty() {
            return Err(EngineError::config(
                "patterns",
                "at least one shape",
                "an empty list",
            ));
        }
        let mut instances = Vec::new();
        let mut offsets = Vec::new();
        let mut canon = Vec::new();
        let mut off = 0usize;
        for (si, shape) in shapes.iter().enumerate() {
            let n = shape.squares.len();
            if n == 0 || n > MAX_SHAPE_SQUARES {
                return Err(EngineError::config(
                    &format!("patterns[{}].squares", shape.name),
                    "1 to 12 squares",
                    format!("{n} squares"),
                ));
            }
            let mut sorted = shape.squares.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != n || sorted.iter().any(|&q| q >= 64) {
                return Err(EngineError::config(
                    &format!("patterns[{}].squares", shape.name),
                    "distinct squares in 0..63",
                    format!("{:?}", shape.squares),
                ));
            }
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let own_set = sorted.clone();
            let mut self_perms: Vec<Vec<usize>> = Vec::new();
            for t in 0..8 {
                let sq: Vec<u8> = shape.squares.iter().map(|&q| transform(q, t)).collect();
                let mut key = sq.clone();
                key.sort_unstable();
                if t > 0 && key == own_set {
                    let perm = sq
                        .iter()
                        .map(|q| shape.squares.iter().position(|x| x == q).unwrap_or(0))
                        .collect();
                    self_perms.push(perm);
                }
                if !seen.contains(&key) {
                    seen.push(key);
                    instances.push((si, sq));
                }
            }
            offsets.push(off);
            canon.extend(
                canonical_table(n, &self_perms)
                    .into_iter()
                    .map(|c| c + off as u32),
            );
            off += 3usize.pow(n as u32);
        }
        if instances.len() > MAX_INSTANCES {
            return Err(EngineError::config(
                "patterns",
                &format!("at most {MAX_INSTANCES} instances in all"),
                instances.len(),
            ));
        }
        let mut per_sq: Vec<Vec<(u8, u32)>> = vec![Vec::new(); 64];
        for (ii, (_, sqs)) in instances.iter().enumerate() {
            for (k, &q) in sqs.iter().enumerate() {
                per_sq[q as usize].push((ii as u8, 3u32.pow(k as u32)));
            }
        }
        let mut feat_start = [0u16; 65];
        let (mut feat_inst, mut feat_pow) = (Vec::new(), Vec::new());
        for (q, list) in per_sq.iter().enumerate() {
            feat_start[q] = feat_inst.len() as u16;
            for &(i, p) in list {
                feat_inst.push(i);
                feat_pow.push(p);
            }
        }
        feat_start[64] = feat_inst.len() as u16;
        let inst_base = instances.iter().map(|(s, _)| offsets[*s] as u32).collect();
        Ok(PatternSet {
            shapes,
            instances,
            offsets,
            phase_len: off + 1,
            feat_start,
            feat_inst,
            feat_pow,
            inst_base,
            canon,
        })
    }

    /// The default set (see [`default_shapes`]).
    #[must_use]
    pub fn default_set() -> PatternSet {
        PatternSet::new(default_shapes()).expect("the default shapes are valid")
    }

    /// A named built-in set: `default`, `small`, the systematic sets
    /// `straight2` (every straight 2-tuple: 32 shapes, 288 entries), `rect2x2`,
    /// `rect2x3`, `rect3x3` (every placement of the rectangle), or the mixes
    /// `default+rect2x2` and `rect2x3+edge` (with the 3×3 corner and edge + 2X).
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] for another name.
    pub fn named(name: &str) -> Result<PatternSet, EngineError> {
        match name {
            "default" => Ok(PatternSet::default_set()),
            "small" => PatternSet::new(small_shapes()),
            "rect2x3" => PatternSet::new(rectangle_shapes(2, 3)),
            "rect2x2" => PatternSet::new(rectangle_shapes(2, 2)),
            "rect3x3" => PatternSet::new(rectangle_shapes(3, 3)),
            "straight2" => PatternSet::new(straight2_shapes()),
            "default+rect2x2" => {
                let mut s = default_shapes();
                s.extend(rectangle_shapes(2, 2));
                PatternSet::new(s)
            }
            "rect2x3+edge" => {
                let mut s = rectangle_shapes(2, 3);
                s.extend(
                    default_shapes()
                        .into_iter()
                        .filter(|s| matches!(s.name.as_str(), "edge2x" | "corner3x3")),
                );
                PatternSet::new(s)
            }
            other => Err(EngineError::config(
                "pattern_set",
                "'default', 'small', 'straight2', 'rect2x2', 'rect2x3', 'rect3x3', 'default+rect2x2' or 'rect2x3+edge'",
                other,
            )),
        }
    }

    /// Number of instances (active features per position, bias excluded).
    #[must_use]
    pub fn n_instances(&self) -> usize {
        self.instances.len()
    }

    /// Writes each instance's table index (offset within a phase) into `out`.
    #[inline(always)]
    pub fn indices(&self, b: &Board, out: &mut [u32]) {
        let n = self.instances.len();
        out[..n].copy_from_slice(&self.inst_base);
        let mut add = |bits: u64, mul: u32| {
            let mut m = bits;
            while m != 0 {
                let q = m.trailing_zeros() as usize;
                m &= m - 1;
                let (s, e) = (self.feat_start[q] as usize, self.feat_start[q + 1] as usize);
                for k in s..e {
                    out[self.feat_inst[k] as usize] += mul * self.feat_pow[k];
                }
            }
        };
        add(b.player, 1);
        add(b.opponent, 2);
        for v in &mut out[..n] {
            *v = self.canon[*v as usize];
        }
    }

    /// Raw (not yet canonical) indices of every instance from both sides' views:
    /// `mine` with the side to move as digit 1 (what [`PatternSet::indices`]
    /// canonicalises) and `theirs` with the other side as digit 1, the view of
    /// every child position before the move's own changes.
    #[inline(always)]
    pub fn raw_index_pair(&self, b: &Board, mine: &mut [u32], theirs: &mut [u32]) {
        let n = self.instances.len();
        mine[..n].copy_from_slice(&self.inst_base);
        theirs[..n].copy_from_slice(&self.inst_base);
        let mut add = |bits: u64, m1: u32, m2: u32| {
            let mut m = bits;
            while m != 0 {
                let q = m.trailing_zeros() as usize;
                m &= m - 1;
                let (s, e) = (self.feat_start[q] as usize, self.feat_start[q + 1] as usize);
                for k in s..e {
                    let (i, p) = (self.feat_inst[k] as usize, self.feat_pow[k]);
                    mine[i] += m1 * p;
                    theirs[i] += m2 * p;
                }
            }
        };
        add(b.player, 1, 2);
        add(b.opponent, 2, 1);
    }

    /// The instances a square belongs to, with the square's power of 3 in each.
    #[inline(always)]
    pub fn square_terms(&self, q: usize) -> impl Iterator<Item = (usize, u32)> + '_ {
        let (s, e) = (self.feat_start[q] as usize, self.feat_start[q + 1] as usize);
        self.feat_inst[s..e]
            .iter()
            .zip(&self.feat_pow[s..e])
            .map(|(&i, &p)| (i as usize, p))
    }

    /// The canonical (shared) offset of a raw within-phase offset.
    #[inline]
    #[must_use]
    pub fn canonical(&self, raw: u32) -> u32 {
        self.canon[raw as usize]
    }

    /// Which shape and table entry a within-phase offset belongs to.
    #[must_use]
    pub fn locate(&self, offset: usize) -> (String, usize) {
        if offset + 1 == self.phase_len {
            return ("bias".into(), 0);
        }
        let s = self.offsets.iter().rposition(|&o| o <= offset).unwrap_or(0);
        (self.shapes[s].name.clone(), offset - self.offsets[s])
    }

    /// An ASCII picture of a shape: the digit is the square's position in the index.
    #[must_use]
    pub fn ascii_shape(&self, shape: usize) -> String {
        let mut cells = ['.'; 64];
        for (k, &q) in self.shapes[shape].squares.iter().enumerate() {
            cells[q as usize] = char::from_digit(k as u32, 36).unwrap_or('#');
        }
        let mut s = String::new();
        for r in 0..8 {
            let row: Vec<String> = (0..8).map(|c| cells[r * 8 + c].to_string()).collect();
            s.push_str(&row.join(" "));
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_has_the_expected_instances() {
        let set = PatternSet::default_set();
        // 4 corner3x3 + 8 corner2x5 + 4 edge2x + 3*4 lines + 2 diag8 + 4*4 shorter diagonals
        assert_eq!(set.n_instances(), 46);
        assert_eq!(
            set.phase_len,
            2 * 59049 + 19683 + 4 * 6561 + 2187 + 729 + 243 + 81 + 1
        );
    }

    #[test]
    fn indices_are_symmetric_under_board_symmetries() {
        let set = PatternSet::default_set();
        let b = Board::initial().play(19).play(18);
        let mut idx = vec![0u32; set.n_instances()];
        set.indices(&b, &mut idx);
        idx.sort_unstable();
        // Every symmetry of the position must give the same multiset of indices.
        for t in 0..8 {
            let map = |x: u64| {
                (0..64u8)
                    .filter(|&q| x >> q & 1 == 1)
                    .fold(0u64, |acc, q| acc | 1 << transform(q, t))
            };
            let m = Board {
                player: map(b.player),
                opponent: map(b.opponent),
            };
            let mut idx2 = vec![0u32; set.n_instances()];
            set.indices(&m, &mut idx2);
            idx2.sort_unstable();
            assert_eq!(idx, idx2, "transform {t}");
        }
    }

    #[test]
    fn systematic_sets_cover_every_placement_once() {
        for (name, placements) in [("rect2x3", 84), ("rect2x2", 49), ("rect3x3", 36)] {
            let set = PatternSet::named(name).unwrap();
            assert_eq!(set.n_instances(), placements, "{name}");
            let mut keys: Vec<Vec<u8>> = set
                .instances
                .iter()
                .map(|(_, sq)| {
                    let mut k = sq.clone();
                    k.sort_unstable();
                    k
                })
                .collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), placements, "{name}");
        }
    }

    #[test]
    fn straight2_is_the_288_weight_network_of_all_adjacent_pairs() {
        let set = PatternSet::named("straight2").unwrap();
        assert_eq!(set.shapes.len(), 32);
        assert_eq!(set.phase_len - 1, 288);
        // 2 * 7 * 8 horizontal and vertical pairs + 2 * 7 * 7 diagonal ones.
        assert_eq!(set.n_instances(), 210);
        for (_, sq) in &set.instances {
            let (a, b) = (i32::from(sq[0]), i32::from(sq[1]));
            assert!((a / 8 - b / 8).abs() <= 1 && (a % 8 - b % 8).abs() <= 1);
        }
    }

    #[test]
    fn bad_shapes_are_rejected_with_the_field_named() {
        let err = PatternSet::new(vec![Shape {
            name: "x".into(),
            squares: vec![1, 1],
        }])
        .unwrap_err();
        assert!(err.to_string().contains("patterns[x].squares"), "{err}");
        assert!(PatternSet::new(vec![]).is_err());
        assert!(PatternSet::named("huge").is_err());
    }
}
