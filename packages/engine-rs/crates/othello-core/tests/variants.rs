//! Every CPU variant this machine supports computes what the baseline computes:
//! perft counts, evaluations, greedy moves, 2-ply values and trained weights.

use std::sync::atomic::AtomicBool;

use othello_core::board::perft_on;
use othello_core::eval::{greedy_child_on, two_ply_on, value_on};
use othello_core::isa::{self, Variant};
use othello_core::pattern::MAX_INSTANCES;
use othello_core::rng::Rng;
use othello_core::train::{TrainConfig, Trainer};
use othello_core::{Board, Weights};

const PERFT: [u64; 9] = [4, 12, 56, 244, 1396, 8200, 55092, 390216, 3005288];

#[test]
fn every_variant_counts_the_standard_perft_table() {
    for v in isa::supported() {
        for (i, &expected) in PERFT.iter().enumerate() {
            assert_eq!(
                perft_on(v, &Board::initial(), i as u32 + 1),
                expected,
                "{v}"
            );
        }
    }
    // From positions with passes and finished games as well.
    let mut rng = Rng::new(9, 0);
    for _ in 0..200 {
        let b = Board::initial().random_walk(&mut rng, 50);
        let want = perft_on(Variant::Baseline, &b, 4);
        for v in isa::supported() {
            assert_eq!(perft_on(v, &b, 4), want, "{v}");
        }
    }
}

#[test]
fn every_variant_evaluates_like_the_baseline() {
    let mut w = Weights::default_weights();
    let mut rng = Rng::new(4, 0);
    for x in &mut w.w {
        *x = (rng.next_f64() as f32 - 0.5) * 0.2;
    }
    let (mut mine, mut theirs) = ([0u32; MAX_INSTANCES], [0u32; MAX_INSTANCES]);
    let mut positions = 0;
    for game in 0..30 {
        let mut rng = Rng::new(8, game);
        let mut b = Board::initial();
        while let Some((moves, _)) = b.next_turn() {
            w.set.raw_index_pair(&b, &mut mine, &mut theirs);
            let base = greedy_child_on(Variant::Baseline, &w, &b, moves, &theirs);
            let two = two_ply_on(Variant::Baseline, &w, &b, &mine, base.0);
            let value = value_on(Variant::Baseline, &w, &b);
            for v in isa::supported() {
                let got = greedy_child_on(v, &w, &b, moves, &theirs);
                assert_eq!((got.0, got.1.to_bits()), (base.0, base.1.to_bits()), "{v}");
                let t = two_ply_on(v, &w, &b, &mine, base.0);
                assert_eq!(t.to_bits(), two.to_bits(), "{v}");
                assert_eq!(value_on(v, &w, &b).to_bits(), value.to_bits(), "{v}");
            }
            positions += 1;
            b = b.play(rng.pick_bit(moves));
        }
    }
    assert!(positions > 1000);
}

#[test]
fn every_variant_trains_bitwise_the_same_weights_for_a_seed() {
    let mut trained: Vec<(Variant, Vec<u32>)> = Vec::new();
    for v in isa::supported() {
        for target_depth in [1, 2] {
            let cfg = TrainConfig {
                seed: 3,
                threads: 2,
                batch_games: 16,
                target_depth,
                pattern_set: "small".into(),
                n_phases: 2,
                ..TrainConfig::default()
            };
            let mut t = Trainer::new(cfg).unwrap();
            t.variant = Some(v);
            t.train(128, &AtomicBool::new(false), |_| {});
            let bits: Vec<u32> = t.weights.w.iter().map(|x| x.to_bits()).collect();
            assert!(bits.iter().any(|&b| b != 0));
            trained.push((v, bits));
        }
    }
    let per_variant = 2;
    for (i, (v, bits)) in trained.iter().enumerate() {
        assert_eq!(bits, &trained[i % per_variant].1, "{v}");
    }
}
