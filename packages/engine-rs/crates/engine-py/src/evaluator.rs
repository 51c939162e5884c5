//! `Evaluator` (pattern evaluation, search, League, replay), `MoveResult` and `weight_diff`.

use super::*;

/// The outcome of `Evaluator.best_move`.
#[pyclass(frozen, module = "trainsvc_engine", get_all)]
pub(crate) struct MoveResult {
    /// The chosen square index, or None when the side to move must pass or the game is over.
    r#move: Option<u32>,
    /// Its name ("d3"), or None.
    pub(crate) square: Option<String>,
    /// Score for the side to move in (-1, 1).
    pub(crate) score: f32,
    /// Exact final disc difference when solved to the end, else None.
    pub(crate) exact_diff: Option<i32>,
    /// Deepest completed depth.
    pub(crate) depth: u32,
    /// Nodes searched.
    pub(crate) nodes: u64,
}

#[pymethods]
impl MoveResult {
    fn __repr__(&self) -> String {
        format!(
            "MoveResult(square={:?}, score={:.4}, depth={}, nodes={})",
            self.square, self.score, self.depth, self.nodes
        )
    }
}

/// Pattern evaluation with search: positive values favour black.
#[pyclass(frozen, module = "trainsvc_engine")]
pub(crate) struct Evaluator {
    pub(crate) weights: Arc<Weights>,
    pub(crate) config: TrainConfig,
    pub(crate) tt: Mutex<TranspositionTable>,
    pub(crate) source: Option<String>,
}

impl Evaluator {
    pub(crate) fn from_weights(
        weights: Weights,
        config: TrainConfig,
        source: Option<String>,
    ) -> Evaluator {
        Evaluator {
            weights: Arc::new(weights),
            config,
            tt: Mutex::new(TranspositionTable::with_bytes(16 << 20)),
            source,
        }
    }
}

pub(crate) fn black_view(v: f32, color: Color) -> f32 {
    if color == Color::Black {
        v
    } else {
        -v
    }
}

#[pymethods]
impl Evaluator {
    #[new]
    #[pyo3(signature = (checkpoint = None, *, pattern_set = "default", n_phases = 6))]
    fn new(
        py: Python<'_>,
        checkpoint: Option<PathBuf>,
        pattern_set: &str,
        n_phases: usize,
    ) -> PyResult<Self> {
        let pattern_set = pattern_set.to_owned();
        run(py, move || {
            if let Some(path) = checkpoint {
                let d = checkpoint::load(&path)?;
                let (w, cfg) = weights_from_checkpoint(&d)?;
                return Ok(Evaluator::from_weights(
                    w,
                    cfg,
                    Some(path.display().to_string()),
                ));
            }
            let cfg = TrainConfig {
                pattern_set,
                n_phases,
                ..TrainConfig::default()
            };
            cfg.validate()?;
            let w = Weights::new(Arc::new(PatternSet::named(&cfg.pattern_set)?), n_phases)?;
            Ok(Evaluator::from_weights(w, cfg, None))
        })
    }

    /// Value of `board` with `player` to move, in (-1, 1); positive favours black.
    #[pyo3(signature = (board, player = None))]
    fn evaluate(
        &self,
        py: Python<'_>,
        board: &Bound<'_, PyAny>,
        player: Option<i64>,
    ) -> PyResult<f32> {
        let (b, color) = board_arg(board, player)?;
        let w = &self.weights;
        run(py, || Ok(black_view(w.value(&b), color)))
    }

    /// Values of many boards at once: `boards` is an (N, 64) array or a sequence of boards.
    ///
    /// `players` is one player for all boards or one per board.
    fn evaluate_batch(
        &self,
        py: Python<'_>,
        boards: &Bound<'_, PyAny>,
        players: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<f32>> {
        let flat: Vec<i64> = if boards.hasattr("astype")? && boards.hasattr("tobytes")? {
            let raw: Vec<u8> = boards
                .call_method1("astype", ("<i8",))?
                .call_method0("tobytes")?
                .extract()?;
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        } else {
            let mut v = Vec::new();
            for item in boards.try_iter()? {
                v.extend(cells_from(&item?)?);
            }
            v
        };
        if flat.len() % 64 != 0 {
            return Err(InvalidBoardError::new_err(format!(
                "boards: {} cells is not a multiple of 64",
                flat.len()
            )));
        }
        let n = flat.len() / 64;
        let ps: Vec<i64> = match players.extract::<i64>() {
            Ok(p) => vec![p; n],
            Err(_) => cells_from(players).map_err(|_| {
                InvalidBoardError::new_err("players: expected an int or one int per board")
            })?,
        };
        if ps.len() != n {
            return Err(InvalidBoardError::new_err(format!(
                "players: expected {n} entries, got {}",
                ps.len()
            )));
        }
        let mut items = Vec::with_capacity(n);
        for (i, (chunk, &p)) in flat.chunks_exact(64).zip(&ps).enumerate() {
            let color =
                color_from(p).map_err(|e| InvalidBoardError::new_err(format!("board {i}: {e}")))?;
            let b = cells_to_board(chunk, color)
                .map_err(|e| InvalidBoardError::new_err(format!("board {i}: {e}")))?;
            items.push((b, color));
        }
        let w = &self.weights;
        run(py, || {
            Ok(items
                .iter()
                .map(|(b, c)| black_view(w.value(b), *c))
                .collect())
        })
    }

    /// The best move for `player` by alpha-beta search (exact when few squares are empty).
    #[pyo3(signature = (board, player = None, depth = 6, time_ms = None, exact_empties = 12))]
    fn best_move(
        &self,
        py: Python<'_>,
        board: &Bound<'_, PyAny>,
        player: Option<i64>,
        depth: u32,
        time_ms: Option<u64>,
        exact_empties: u32,
    ) -> PyResult<MoveResult> {
        let (b, _) = board_arg(board, player)?;
        if !(1..=60).contains(&depth) {
            return Err(errors::config(
                "depth",
                format!("got {depth}; allowed: 1 to 60"),
            ));
        }
        if exact_empties > 24 {
            return Err(errors::config(
                "exact_empties",
                format!("got {exact_empties}; allowed: 0 to 24"),
            ));
        }
        let limits = Limits {
            depth,
            time: time_ms.map(Duration::from_millis),
            exact_empties,
        };
        let w = &self.weights;
        let tt = &self.tt;
        let r = run(py, || {
            // Concurrent calls never wait for each other: a busy table means a private one.
            Ok(match tt.try_lock() {
                Ok(mut t) => search(&b, w, &mut t, &limits),
                Err(_) => search(&b, w, &mut TranspositionTable::with_bytes(1 << 20), &limits),
            })
        })?;
        Ok(MoveResult {
            r#move: r.best_move,
            square: r.best_move.map(square_name),
            score: r.score,
            exact_diff: r.exact_diff,
            depth: r.depth,
            nodes: r.nodes,
        })
    }

    /// Legal moves (square indices) of `player` on `board`.
    #[pyo3(signature = (board, player = None))]
    fn legal_moves(&self, board: &Bound<'_, PyAny>, player: Option<i64>) -> PyResult<Vec<u32>> {
        let (b, _) = board_arg(board, player)?;
        Ok(bits(b.moves()))
    }

    /// Names of the pattern shapes, in table order.
    #[getter]
    fn pattern_names(&self) -> Vec<String> {
        self.weights
            .set
            .shapes
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// Number of phases.
    #[getter]
    fn n_phases(&self) -> usize {
        self.weights.n_phases
    }

    /// Total number of weights.
    #[getter]
    fn weight_count(&self) -> usize {
        self.weights.w.len()
    }

    /// The checkpoint it was loaded from, if any.
    #[getter]
    fn source(&self) -> Option<String> {
        self.source.clone()
    }

    /// The training configuration (a dict) the weights belong to.
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &othello_core::state::config_to_json(&self.config))
    }

    /// The table of `pattern` in `phase` (3^n values), or the bias as a 1-element list.
    fn weights(&self, pattern: &str, phase: usize) -> PyResult<Vec<f32>> {
        let w = &self.weights;
        if phase >= w.n_phases {
            return Err(errors::config(
                "phase",
                format!("got {phase}; allowed: 0 to {}", w.n_phases - 1),
            ));
        }
        let base = phase * w.set.phase_len;
        if pattern == "bias" {
            return Ok(vec![w.w[base + w.set.phase_len - 1]]);
        }
        let Some(s) = w.set.shapes.iter().position(|s| s.name == pattern) else {
            return Err(errors::config(
                "pattern",
                format!(
                    "got {pattern:?}; allowed: bias or one of {:?}",
                    self.pattern_names()
                ),
            ));
        };
        let start = base + w.set.offsets[s];
        let len = 3usize.pow(w.set.shapes[s].squares.len() as u32);
        Ok(w.w[start..start + len].to_vec())
    }

    /// An ASCII picture of a pattern's squares (digits give the index order).
    fn pattern_ascii(&self, pattern: &str) -> PyResult<String> {
        let set = &self.weights.set;
        let s = set
            .shapes
            .iter()
            .position(|s| s.name == pattern)
            .ok_or_else(|| {
                errors::config(
                    "pattern",
                    format!("got {pattern:?}; allowed: {:?}", self.pattern_names()),
                )
            })?;
        Ok(set.ascii_shape(s))
    }

    /// Saves these weights as an engine checkpoint file (atomically); returns its size in bytes.
    #[pyo3(signature = (path, compress = false))]
    fn save(&self, py: Python<'_>, path: PathBuf, compress: bool) -> PyResult<u64> {
        let (w, cfg) = ((*self.weights).clone(), self.config.clone());
        run(py, move || {
            let t = Trainer::with_weights(TrainConfig { threads: 1, ..cfg }, w)?;
            let (tree, md) = trainer_to_checkpoint(&t);
            checkpoint::save(&path, &tree, &md, compress)
        })
    }

    /// League match against "random", "heuristic" or another `Evaluator`
    /// (a fixed engine opponent, searched to `opponent_depth`, 1 = greedy):
    /// returns a dict with the score and its 95% interval.
    ///
    /// The engine plays at `depth` (1 = greedy, the League's rule) and, with
    /// `exact_empties` > 0, solves the rest of the game exactly once that few
    /// squares are empty (0, the League's rule, never does).
    #[pyo3(signature = (opponent, pairs = 500, depth = 1, random_rate = 0.1, seed = 0, exact_empties = 0, opponent_depth = 1))]
    #[allow(clippy::too_many_arguments)]
    fn league(
        &self,
        py: Python<'_>,
        opponent: &Bound<'_, PyAny>,
        pairs: u64,
        depth: u32,
        random_rate: f64,
        seed: u64,
        exact_empties: u32,
        opponent_depth: u32,
    ) -> PyResult<Py<PyAny>> {
        let engine_opponent = opponent
            .cast::<Evaluator>()
            .ok()
            .map(|e| Arc::clone(&e.get().weights));
        let (opp, opponent_name) = match (&engine_opponent, opponent.extract::<String>()) {
            (Some(w), _) => (
                Player::Engine {
                    weights: w,
                    depth: opponent_depth,
                    exact_empties: 0,
                },
                "engine".to_owned(),
            ),
            (None, Ok(name)) if name == "random" => (Player::Random, name),
            (None, Ok(name)) if name == "heuristic" => (Player::Heuristic, name),
            (None, other) => {
                let got = other.unwrap_or_else(|_| opponent.to_string());
                return Err(errors::config(
                    "opponent",
                    format!("got {got:?}; allowed: 'random', 'heuristic' or an Evaluator"),
                ));
            }
        };
        let out_of_range = if !(1..=100_000).contains(&pairs) {
            Some(("pairs", pairs.to_string(), "1 to 100000".to_owned()))
        } else if !(1..=8).contains(&depth) {
            Some(("depth", depth.to_string(), "1 to 8".to_owned()))
        } else if !(1..=8).contains(&opponent_depth) {
            Some((
                "opponent_depth",
                opponent_depth.to_string(),
                "1 to 8".to_owned(),
            ))
        } else if !(0.0..=1.0).contains(&random_rate) {
            Some((
                "random_rate",
                random_rate.to_string(),
                "0.0 to 1.0".to_owned(),
            ))
        } else if exact_empties > MAX_LEAGUE_EXACT_EMPTIES {
            let allowed = format!("0 to {MAX_LEAGUE_EXACT_EMPTIES}");
            Some(("exact_empties", exact_empties.to_string(), allowed))
        } else {
            None
        };
        if let Some((field, got, allowed)) = out_of_range {
            return Err(errors::config(
                field,
                format!("got {got}; allowed: {allowed}"),
            ));
        }
        let engine = Player::Engine {
            weights: &self.weights,
            depth,
            exact_empties,
        };
        let r = run(py, || {
            Ok(league_match(&engine, &opp, pairs, random_rate, seed))
        })?;
        let d = PyDict::new(py);
        d.set_item("opponent", opponent_name)?;
        d.set_item("games", r.games)?;
        d.set_item("wins", r.wins)?;
        d.set_item("draws", r.draws)?;
        d.set_item("losses", r.losses)?;
        d.set_item("score", r.score)?;
        d.set_item("ci95", r.ci95)?;
        Ok(d.into_any().unbind())
    }

    /// Replays one self-play game as training plays it and logs both training targets of every position.
    ///
    /// Returns one dict per position: ply, player, move, explored (a random
    /// move), value (black's view), td_error, lambda_target (TD(lambda)'s
    /// target, folded as training folds it: cut at exploration moves) and
    /// search_target (the 2-ply value, the default's target).
    #[pyo3(signature = (seed = 0, epsilon = 0.0, lambda_ = 0.5))]
    fn replay(&self, py: Python<'_>, seed: u64, epsilon: f64, lambda_: f32) -> PyResult<Py<PyAny>> {
        let w = &self.weights;
        let rows = run(py, || {
            Ok(othello_core::replay::replay_game(w, seed, epsilon, lambda_))
        })?;
        let list = PyList::empty(py);
        for r in rows {
            let d = PyDict::new(py);
            d.set_item("ply", r.ply)?;
            d.set_item("player", r.player)?;
            d.set_item("move", square_name(r.square))?;
            d.set_item("explored", r.explored)?;
            d.set_item("value", r.value)?;
            d.set_item("td_error", r.td_error)?;
            d.set_item("lambda_target", r.lambda_target)?;
            d.set_item("search_target", r.search_target)?;
            list.append(d)?;
        }
        Ok(list.into_any().unbind())
    }

    fn __repr__(&self) -> String {
        format!(
            "Evaluator(patterns={}, phases={}, weights={}, source={:?})",
            self.weights.set.shapes.len(),
            self.weights.n_phases,
            self.weights.w.len(),
            self.source
        )
    }
}

/// Weight changes between two evaluators: a summary per pattern and phase, and anomalies.
///
/// Returns `(summary, anomalies)`: summary rows `(pattern, phase, max_abs, mean_abs)`,
/// anomalies `(pattern, phase, index, before, after)` for changes above `threshold`.
#[pyfunction]
#[pyo3(signature = (before, after, threshold = 0.5, limit = 100))]
#[allow(clippy::type_complexity)]
pub(crate) fn weight_diff(
    py: Python<'_>,
    before: &Evaluator,
    after: &Evaluator,
    threshold: f32,
    limit: usize,
) -> PyResult<(
    Vec<(String, usize, f32, f32)>,
    Vec<(String, usize, usize, f32, f32)>,
)> {
    let (a, b) = (&before.weights, &after.weights);
    if a.w.len() != b.w.len() || a.set.shapes != b.set.shapes {
        return Err(errors::config(
            "after",
            "different pattern set or phase count than before",
        ));
    }
    run(py, || {
        let plen = a.set.phase_len;
        let mut summary = Vec::new();
        let mut anomalies = Vec::new();
        for phase in 0..a.n_phases {
            for (s, shape) in a.set.shapes.iter().enumerate() {
                let start = phase * plen + a.set.offsets[s];
                let len = 3usize.pow(shape.squares.len() as u32);
                let (mut mx, mut sum) = (0f32, 0f64);
                for i in start..start + len {
                    let d = (b.w[i] - a.w[i]).abs();
                    mx = mx.max(d);
                    sum += f64::from(d);
                    if d > threshold && anomalies.len() < limit {
                        anomalies.push((shape.name.clone(), phase, i - start, a.w[i], b.w[i]));
                    }
                }
                summary.push((shape.name.clone(), phase, mx, (sum / len as f64) as f32));
            }
        }
        Ok((summary, anomalies))
    })
}
