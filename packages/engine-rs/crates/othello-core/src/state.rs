//! Engine state <-> checkpoint trees: what an engine checkpoint holds.
//!
//! Tree: `weights` (F32 `[n_phases, phase_len]`), `opt_state` (`m`, `v`, `step`),
//! `stats` (counters, `recent_diffs` I8, `recent_errors` U8). Metadata:
//! `trainer: "othello"`, the full `config`, the pattern shapes, `step` (games).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::checkpoint::{DType, Decoded, Node, Tensor};
use crate::error::EngineError;
use crate::eval::Weights;
use crate::pattern::PatternSet;
use crate::train::cma::SepCma;
use crate::train::evolve::{Elite, ParkedSearch, Population};
use crate::train::{TrainConfig, Trainer};

/// The `trainer` value in engine checkpoint metadata.
pub const TRAINER_KIND: &str = "othello";

/// The configuration as a JSON object.
#[must_use]
pub fn config_to_json(c: &TrainConfig) -> Value {
    let mut obj = json!({
        "seed": c.seed, "threads": c.threads, "batch_games": c.batch_games,
        "search_depth": c.search_depth, "target_depth": c.target_depth,
        "td_heuristic_games": c.td_heuristic_games, "epsilon_start": c.epsilon_start,
        "epsilon_end": c.epsilon_end, "epsilon_decay_games": c.epsilon_decay_games,
        "lambda": f64::from(c.lambda), "learning_rate": f64::from(c.learning_rate),
        "lr_decay_games": c.lr_decay_games, "lr_decay_visits": c.lr_decay_visits,
        "beta1": f64::from(c.beta1), "beta2": f64::from(c.beta2), "adam_eps": f64::from(c.adam_eps),
        "optimizer": c.optimizer.name(),
        "pattern_set": c.pattern_set, "n_phases": c.n_phases,
        "memory_budget_mb": c.memory_budget_mb, "error_window": c.error_window,
        "max_error_rate": c.max_error_rate, "inject_panic_every": c.inject_panic_every,
        "inject_nan_at_game": c.inject_nan_at_game,
        "learner": c.learner.name(),
        "ctdl_population": c.ctdl_population, "ctdl_td_games": c.ctdl_td_games,
        "ctdl_match_pairs": c.ctdl_match_pairs,
    });
    let es = json!({
        "es_parents": c.es_parents, "es_offspring": c.es_offspring,
        "es_sigma": f64::from(c.es_sigma), "es_sigma_decay": c.es_sigma_decay, "es_recombine": c.es_recombine, "es_fitness_pairs": c.es_fitness_pairs,
        "es_fitness_pairs_max": c.es_fitness_pairs_max, "es_fitness_step": c.es_fitness_step, "es_fitness_margin": c.es_fitness_margin, "es_mean_rate": c.es_mean_rate, "es_normalize": c.es_normalize, "es_split_games": c.es_split_games, "es_portfolio": c.es_portfolio, "es_portfolio_games": c.es_portfolio_games, "es_portfolio_pairs": c.es_portfolio_pairs, "es_random_pairs": c.es_random_pairs, "es_elite_pairs": c.es_elite_pairs, "es_elite_every": c.es_elite_every, "es_strategy": c.es_strategy.name(),
    });
    if let (Value::Object(all), Value::Object(es)) = (&mut obj, es) {
        all.extend(es);
    }
    obj
}

/// Names of every configuration field.
pub const CONFIG_FIELDS: [&str; 47] = [
    "seed",
    "threads",
    "batch_games",
    "search_depth",
    "target_depth",
    "td_heuristic_games",
    "epsilon_start",
    "epsilon_end",
    "epsilon_decay_games",
    "lambda",
    "learning_rate",
    "lr_decay_games",
    "lr_decay_visits",
    "beta1",
    "beta2",
    "adam_eps",
    "optimizer",
    "pattern_set",
    "n_phases",
    "memory_budget_mb",
    "error_window",
    "max_error_rate",
    "inject_panic_every",
    "inject_nan_at_game",
    "learner",
    "es_parents",
    "es_offspring",
    "es_sigma",
    "es_sigma_decay",
    "es_recombine",
    "es_fitness_pairs",
    "es_fitness_pairs_max",
    "es_fitness_step",
    "es_fitness_margin",
    "es_mean_rate",
    "es_normalize",
    "es_split_games",
    "es_portfolio",
    "es_portfolio_games",
    "es_portfolio_pairs",
    "es_random_pairs",
    "es_elite_pairs",
    "es_elite_every",
    "es_strategy",
    "ctdl_population",
    "ctdl_td_games",
    "ctdl_match_pairs",
];

/// Applies the fields of a JSON object to `base`, then validates.
///
/// # Errors
/// [`EngineError::InvalidConfig`] naming an unknown field, a field of the wrong
/// type, or a value out of range.
pub fn config_update(
    base: &TrainConfig,
    obj: &Map<String, Value>,
) -> Result<TrainConfig, EngineError> {
    let mut c = base.clone();
    for (k, v) in obj {
        let uint = || {
            v.as_u64()
                .ok_or_else(|| EngineError::config(k, "a non-negative integer", v))
        };
        let float = || {
            v.as_f64()
                .ok_or_else(|| EngineError::config(k, "a number", v))
        };
        match k.as_str() {
            "seed" => c.seed = uint()?,
            "threads" => c.threads = uint()? as usize,
            "batch_games" => c.batch_games = uint()? as usize,
            "search_depth" => c.search_depth = u32::try_from(uint()?).unwrap_or(u32::MAX),
            "target_depth" => c.target_depth = u32::try_from(uint()?).unwrap_or(u32::MAX),
            "td_heuristic_games" => c.td_heuristic_games = float()?,
            "epsilon_start" => c.epsilon_start = float()?,
            "epsilon_end" => c.epsilon_end = float()?,
            "epsilon_decay_games" => c.epsilon_decay_games = uint()?,
            "lambda" => c.lambda = float()? as f32,
            "learning_rate" => c.learning_rate = float()? as f32,
            "lr_decay_games" => c.lr_decay_games = uint()?,
            "lr_decay_visits" => c.lr_decay_visits = uint()?,
            "beta1" => c.beta1 = float()? as f32,
            "beta2" => c.beta2 = float()? as f32,
            "adam_eps" => c.adam_eps = float()? as f32,
            "optimizer" => {
                c.optimizer = v
                    .as_str()
                    .ok_or_else(|| EngineError::config(k, "a string", v))?
                    .parse()?;
            }
            "pattern_set" => {
                c.pattern_set = v
                    .as_str()
                    .ok_or_else(|| EngineError::config(k, "a string", v))?
                    .to_owned();
            }
            "n_phases" => c.n_phases = uint()? as usize,
            "memory_budget_mb" => c.memory_budget_mb = uint()? as usize,
            "error_window" => c.error_window = uint()?,
            "max_error_rate" => c.max_error_rate = float()?,
            "inject_panic_every" => c.inject_panic_every = uint()?,
            "inject_nan_at_game" => c.inject_nan_at_game = uint()?,
            "learner" => {
                c.learner = v
                    .as_str()
                    .ok_or_else(|| EngineError::config(k, "a string: 'td', 'ctdl' or 'es'", v))?
                    .parse()?;
            }
            "es_parents" => c.es_parents = uint()? as usize,
            "es_offspring" => c.es_offspring = uint()? as usize,
            "es_sigma" => c.es_sigma = float()? as f32,
            "es_sigma_decay" => c.es_sigma_decay = uint()?,
            "es_recombine" => {
                c.es_recombine = v
                    .as_bool()
                    .ok_or_else(|| EngineError::config(k, "true or false", v))?;
            }
            "es_fitness_pairs" => c.es_fitness_pairs = uint()?,
            "es_fitness_pairs_max" => c.es_fitness_pairs_max = uint()?,
            "es_fitness_step" => c.es_fitness_step = float()?,
            "es_fitness_margin" => c.es_fitness_margin = float()?,
            "es_mean_rate" => c.es_mean_rate = float()?,
            "es_normalize" => c.es_normalize = float()?,
            "es_split_games" => c.es_split_games = uint()?,
            "es_portfolio" => c.es_portfolio = uint()?,
            "es_portfolio_games" => c.es_portfolio_games = uint()?,
            "es_portfolio_pairs" => c.es_portfolio_pairs = uint()?,
            "es_random_pairs" => c.es_random_pairs = uint()?,
            "es_elite_pairs" => c.es_elite_pairs = uint()?,
            "es_elite_every" => c.es_elite_every = uint()?,
            "es_strategy" => {
                c.es_strategy = v
                    .as_str()
                    .ok_or_else(|| EngineError::config(k, "a string: 'plus' or 'sep-cma'", v))?
                    .parse()?;
            }
            "ctdl_population" => c.ctdl_population = uint()? as usize,
            "ctdl_td_games" => c.ctdl_td_games = uint()?,
            "ctdl_match_pairs" => c.ctdl_match_pairs = uint()?,
            other => {
                return Err(EngineError::config(
                    other,
                    &format!("one of {}", CONFIG_FIELDS.join(", ")),
                    "an unknown field",
                ))
            }
        }
    }
    c.validate()?;
    Ok(c)
}

fn u32_tensor(rows: usize, v: &[u32]) -> Tensor {
    Tensor {
        dtype: DType::U32,
        shape: vec![rows, v.len() / rows.max(1)],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn f32_tensor(rows: usize, v: &[f32]) -> Node {
    Node::Tensor(Tensor::f32(vec![rows, v.len() / rows.max(1)], v))
}

/// The checkpoint tree and metadata of a trainer.
#[must_use]
pub fn trainer_to_checkpoint(t: &Trainer) -> (Node, Value) {
    let p = t.weights.n_phases;
    let s = &t.stats;
    let diffs: Vec<i8> = s.recent_diffs.iter().copied().collect();
    let errs: Vec<u8> = s.recent_errors.iter().map(|&e| u8::from(e)).collect();
    let int = |v: u64| Node::Int(v as i64);
    let tree = Node::dict([
        ("weights", f32_tensor(p, &t.weights.w)),
        (
            "opt_state",
            Node::dict([
                ("m", f32_tensor(p, &t.adam_m)),
                ("v", f32_tensor(p, &t.adam_v)),
                ("t", Node::Tensor(u32_tensor(p, &t.adam_t))),
                ("step", int(t.adam_step)),
            ]),
        ),
        (
            "stats",
            Node::dict([
                ("games", int(s.games)),
                ("black_wins", int(s.black_wins)),
                ("white_wins", int(s.white_wins)),
                ("draws", int(s.draws)),
                ("stone_diff_sum", Node::Int(s.stone_diff_sum)),
                ("errors", int(s.errors)),
                ("nan_resets", int(s.nan_resets)),
                (
                    "recent_diffs",
                    Node::Tensor(Tensor::i8(vec![diffs.len()], &diffs)),
                ),
                (
                    "recent_errors",
                    Node::Tensor(Tensor {
                        dtype: DType::U8,
                        shape: vec![errs.len()],
                        data: errs,
                    }),
                ),
            ]),
        ),
    ]);
    let mut tree = tree;
    if let (Node::Dict(items), Some(pop)) =
        (&mut tree, population_node(&t.population, t.weights.w.len()))
    {
        items.insert("population".into(), pop);
    }
    (tree, weights_metadata(&t.weights, &t.config))
}

/// The `population` node of an evolving learner (`ctdl`, `es`): every
/// individual's weights (F32 `[individuals, weights]`), the generation count,
/// the `cma` and `elite` nodes when there are such; and with an
/// `es_portfolio` race, `search` (this search's index, when not 0) and
/// `parked` (a list of the other searches, each its `network` and its own
/// `population` node).
fn population_node(pop: &Population, n: usize) -> Option<Node> {
    let any = !pop.individuals.is_empty() || pop.search != 0 || !pop.parked.is_empty();
    any.then(|| population_dict(pop, n))
}

/// [`population_node`]'s node, written whatever the population holds (a
/// parked search that has not run yet has no individuals).
fn population_dict(pop: &Population, n: usize) -> Node {
    let flat: Vec<f32> = pop.individuals.concat();
    let mut node = Node::dict([
        (
            "weights",
            Node::Tensor(Tensor::f32(vec![pop.individuals.len(), n], &flat)),
        ),
        ("generation", Node::Int(pop.generation as i64)),
    ]);
    if let Node::Dict(items) = &mut node {
        if let Some(cma) = &pop.cma {
            items.insert("cma".into(), cma_node(cma));
        }
        if let Some(elite) = &pop.elite {
            let w = Tensor::f32(vec![elite.weights.len()], &elite.weights);
            let elite = Node::dict([
                ("weights", Node::Tensor(w)),
                ("points", Node::Float(elite.points)),
            ]);
            items.insert("elite".into(), elite);
        }
        if pop.search != 0 {
            items.insert("search".into(), Node::Int(pop.search as i64));
        }
        if !pop.parked.is_empty() {
            let parked = pop.parked.iter().map(|p| {
                let network = Node::Tensor(Tensor::f32(vec![p.weights.len()], &p.weights));
                let population = population_dict(&p.population, n);
                Node::dict([("network", network), ("population", population)])
            });
            items.insert("parked".into(), Node::List(parked.collect()));
        }
    }
    node
}

/// The `population/cma` node: the separable CMA-ES state, exact (F64).
fn cma_node(c: &SepCma) -> Node {
    let v = |x: &[f64]| Node::Tensor(Tensor::f64(vec![x.len()], x));
    Node::dict([
        ("mean", v(&c.mean)),
        ("diag", v(&c.diag)),
        ("p_sigma", v(&c.p_sigma)),
        ("p_c", v(&c.p_c)),
        ("sigma", Node::Float(c.sigma)),
        ("updates", Node::Int(c.updates as i64)),
    ])
}

/// Restores [`cma_node`].
fn cma_from(node: &Node, path: &str) -> Result<SepCma, EngineError> {
    let v = |k: &str| {
        let what = format!("{path}/{k}");
        node.get(k)?.as_tensor(&what)?.as_f64(&what)
    };
    let c = SepCma {
        mean: v("mean")?,
        diag: v("diag")?,
        p_sigma: v("p_sigma")?,
        p_c: v("p_c")?,
        sigma: match node.get("sigma")? {
            Node::Float(x) => *x,
            _ => {
                return Err(EngineError::CorruptCheckpoint(format!(
                    "{path}/sigma: expected a float"
                )))
            }
        },
        updates: node.get("updates")?.as_int(&format!("{path}/updates"))? as u64,
    };
    let n = c.mean.len();
    if [c.diag.len(), c.p_sigma.len(), c.p_c.len()] != [n; 3] {
        return Err(EngineError::CorruptCheckpoint(format!(
            "{path}: expected {n} values in diag, p_sigma and p_c"
        )));
    }
    Ok(c)
}

/// Restores the `population` node written by [`population_node`], if any.
fn population_from(d: &Decoded, t: &mut Trainer) -> Result<(), EngineError> {
    if let Ok(node) = d.tree.get("population") {
        t.population = population_of(node, t.weights.w.len(), "population")?;
    }
    Ok(())
}

/// Reads a [`population_node`] found at `path` (for the error messages), for
/// networks of `n` weights.
fn population_of(node: &Node, n: usize, path: &str) -> Result<Population, EngineError> {
    let what = format!("{path}/weights");
    let w = node.get("weights")?.as_tensor(&what)?.as_f32(&what)?;
    if n == 0 || w.len() % n != 0 {
        return Err(EngineError::CorruptCheckpoint(format!(
            "{what}: expected a multiple of {n} values, found {}",
            w.len()
        )));
    }
    let optional = |key: &str| node.get(key).ok();
    let parked = match optional("parked") {
        Some(Node::List(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parked_of(item, n, &format!("{path}/parked/{i}")))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(EngineError::CorruptCheckpoint(format!(
                "{path}/parked: expected a list"
            )))
        }
        None => Vec::new(),
    };
    Ok(Population {
        individuals: w.chunks_exact(n).map(<[f32]>::to_vec).collect(),
        generation: node
            .get("generation")?
            .as_int(&format!("{path}/generation"))? as u64,
        last_fitness: Vec::new(),
        cma: optional("cma")
            .map(|c| cma_from(c, &format!("{path}/cma")))
            .transpose()?,
        elite: optional("elite")
            .map(|e| elite_from(e, n, &format!("{path}/elite")))
            .transpose()?,
        search: optional("search")
            .map(|s| s.as_int(&format!("{path}/search")))
            .transpose()?
            .map_or(0, |s| s as u64),
        parked,
        last_race: Vec::new(),
    })
}

/// The network (F32, `n` values) under `key` of the node at `path`.
fn network_at(node: &Node, key: &str, n: usize, path: &str) -> Result<Vec<f32>, EngineError> {
    let what = format!("{path}/{key}");
    let weights = node.get(key)?.as_tensor(&what)?.as_f32(&what)?;
    if weights.len() != n {
        return Err(EngineError::CorruptCheckpoint(format!(
            "{what}: expected {n} values, found {}",
            weights.len()
        )));
    }
    Ok(weights)
}

/// Reads one search of `population/parked`: its network and population.
fn parked_of(node: &Node, n: usize, path: &str) -> Result<ParkedSearch, EngineError> {
    let weights = network_at(node, "network", n, path)?;
    let population = population_of(node.get("population")?, n, &format!("{path}/population"))?;
    Ok(ParkedSearch {
        weights,
        population,
    })
}

/// Restores the `population/elite` node: the elite's weights (F32, as many
/// as the trainer's) and its points in the last comparison.
fn elite_from(node: &Node, n: usize, path: &str) -> Result<Elite, EngineError> {
    let weights = network_at(node, "weights", n, path)?;
    let Node::Float(points) = node.get("points")? else {
        return Err(EngineError::CorruptCheckpoint(format!(
            "{path}/points: expected a float"
        )));
    };
    Ok(Elite {
        weights,
        points: *points,
    })
}

/// Metadata describing weights trained under `config`.
#[must_use]
pub fn weights_metadata(w: &Weights, config: &TrainConfig) -> Value {
    let shapes: Vec<Value> =
        w.set.shapes.iter().map(|s| json!({"name": s.name, "squares": s.squares.iter().map(|&q| u64::from(q)).collect::<Vec<_>>()})).collect();
    json!({
        "trainer": TRAINER_KIND,
        "engine": concat!("othello-core ", env!("CARGO_PKG_VERSION")),
        "config": config_to_json(config),
        "pattern_shapes": shapes,
        "phase_len": w.set.phase_len,
    })
}

/// The configuration stored in a checkpoint. A checkpoint written before
/// `lr_decay_visits` existed was trained with the decay by games, so a
/// missing field means 0, and one written before `target_depth` existed
/// learnt by TD(lambda) along the game, so a missing field means 1 (resuming
/// keeps the rule it was trained with).
///
/// # Errors
/// As [`config_update`].
pub fn config_from_checkpoint(obj: &Map<String, Value>) -> Result<TrainConfig, EngineError> {
    let base = TrainConfig {
        lr_decay_visits: 0,
        target_depth: 1,
        ..TrainConfig::default()
    };
    config_update(&base, obj)
}

/// Only the weights of an engine checkpoint tree (`weights`, `metadata.config`).
///
/// # Errors
/// [`EngineError::CorruptCheckpoint`] when the checkpoint is not an engine
/// checkpoint or its weights do not fit its pattern set.
pub fn weights_from_checkpoint(d: &Decoded) -> Result<(Weights, TrainConfig), EngineError> {
    if d.metadata.get("trainer").and_then(Value::as_str) != Some(TRAINER_KIND) {
        return Err(EngineError::CorruptCheckpoint(format!(
            "metadata.trainer: expected {TRAINER_KIND:?}, found {}",
            d.metadata.get("trainer").unwrap_or(&Value::Null)
        )));
    }
    let cfg_obj = d
        .metadata
        .get("config")
        .and_then(Value::as_object)
        .ok_or_else(|| EngineError::CorruptCheckpoint("metadata.config: missing".into()))?;
    let config = config_from_checkpoint(cfg_obj)?;
    let set = Arc::new(PatternSet::named(&config.pattern_set)?);
    let mut w = Weights::new(set, config.n_phases)?;
    let t = d.tree.get("weights")?.as_tensor("weights")?;
    let values = t.as_f32("weights")?;
    if values.len() != w.w.len() {
        return Err(EngineError::CorruptCheckpoint(format!(
            "weights: expected {} values for pattern set {:?} with {} phases, found {}",
            w.w.len(),
            config.pattern_set,
            config.n_phases,
            values.len()
        )));
    }
    w.w = values;
    Ok((w, config))
}

/// A trainer restored from an engine checkpoint (weights, Adam state, statistics).
///
/// # Errors
/// As [`weights_from_checkpoint`], plus a missing or mis-sized optimizer state.
pub fn trainer_from_checkpoint(d: &Decoded) -> Result<Trainer, EngineError> {
    let (w, config) = weights_from_checkpoint(d)?;
    let n = w.w.len();
    let mut t = Trainer::with_weights(config, w)?;
    let opt = d.tree.get("opt_state")?;
    for (name, dst) in [("m", &mut t.adam_m), ("v", &mut t.adam_v)] {
        let v = opt.get(name)?.as_tensor(name)?.as_f32(name)?;
        if v.len() != n {
            return Err(EngineError::CorruptCheckpoint(format!(
                "opt_state/{name}: expected {n} values, found {}",
                v.len()
            )));
        }
        *dst = v;
    }
    let counts = opt.get("t")?.as_tensor("opt_state/t")?;
    if counts.dtype != DType::U32 || counts.data.len() != 4 * n {
        return Err(EngineError::CorruptCheckpoint(format!(
            "opt_state/t: expected {n} U32 values"
        )));
    }
    t.adam_t = counts
        .data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    t.adam_step = opt.get("step")?.as_int("opt_state/step")? as u64;
    let s = d.tree.get("stats")?;
    let u = |k: &str| -> Result<u64, EngineError> { Ok(s.get(k)?.as_int(k)? as u64) };
    t.stats.games = u("games")?;
    t.stats.black_wins = u("black_wins")?;
    t.stats.white_wins = u("white_wins")?;
    t.stats.draws = u("draws")?;
    t.stats.stone_diff_sum = s.get("stone_diff_sum")?.as_int("stone_diff_sum")?;
    t.stats.errors = u("errors")?;
    t.stats.nan_resets = u("nan_resets")?;
    t.stats.recent_diffs = s
        .get("recent_diffs")?
        .as_tensor("recent_diffs")?
        .data
        .iter()
        .map(|&b| b as i8)
        .collect();
    t.stats.recent_errors = s
        .get("recent_errors")?
        .as_tensor("recent_errors")?
        .data
        .iter()
        .map(|&b| b != 0)
        .collect();
    population_from(d, &mut t)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::checkpoint::{decode, encode};

    #[test]
    fn resume_from_a_checkpoint_gives_the_same_weights_as_never_stopping() {
        let cfg = TrainConfig {
            threads: 1,
            batch_games: 16,
            pattern_set: "small".into(),
            n_phases: 2,
            ..TrainConfig::default()
        };
        let stop = AtomicBool::new(false);
        let mut straight = Trainer::new(cfg.clone()).unwrap();
        straight.train(128, &stop, |_| {});
        let mut first = Trainer::new(cfg).unwrap();
        first.train(64, &stop, |_| {});
        let (tree, md) = trainer_to_checkpoint(&first);
        let bytes = encode(&tree, &md).unwrap();
        let mut resumed = trainer_from_checkpoint(&decode(&bytes).unwrap()).unwrap();
        resumed.train(128, &stop, |_| {});
        assert_eq!(resumed.weights.w, straight.weights.w);
        assert_eq!(resumed.adam_m, straight.adam_m);
        assert_eq!(resumed.adam_t, straight.adam_t);
        assert_eq!(resumed.stats, straight.stats);
    }

    #[test]
    fn config_update_names_unknown_and_mistyped_fields() {
        let base = TrainConfig::default();
        let bad = json!({"lamda": 0.5});
        let err = config_update(&base, bad.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("lamda:"), "{err}");
        let bad = json!({"batch_games": "many"});
        let err = config_update(&base, bad.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("batch_games:"), "{err}");
        let round = config_update(&base, config_to_json(&base).as_object().unwrap()).unwrap();
        assert_eq!(round, base);
        // A checkpoint from before lr_decay_visits resumes with the decay by games.
        let base = TrainConfig {
            lr_decay_visits: 10_000,
            ..base
        };
        let mut old = config_to_json(&base);
        old.as_object_mut().unwrap().remove("lr_decay_visits");
        let cfg = config_from_checkpoint(old.as_object().unwrap()).unwrap();
        assert_eq!(cfg.lr_decay_visits, 0);
        // One from before target_depth resumes learning along the game (1), not
        // with the new default (2).
        assert_eq!(base.target_depth, 2);
        old.as_object_mut().unwrap().remove("target_depth");
        let cfg = config_from_checkpoint(old.as_object().unwrap()).unwrap();
        assert_eq!(cfg.target_depth, 1);
        assert_eq!(
            config_from_checkpoint(config_to_json(&base).as_object().unwrap()).unwrap(),
            base
        );
        // td_heuristic_games is saved and read back; one from before it plays self-play only.
        let vs = TrainConfig {
            td_heuristic_games: 0.5,
            ..base
        };
        let mut saved = config_to_json(&vs);
        assert_eq!(
            config_from_checkpoint(saved.as_object().unwrap()).unwrap(),
            vs
        );
        saved.as_object_mut().unwrap().remove("td_heuristic_games");
        let cfg = config_from_checkpoint(saved.as_object().unwrap()).unwrap();
        assert_eq!(cfg.td_heuristic_games, 0.0);
    }
}
