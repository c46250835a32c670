//! The request kinds of the HTTP load and their weighted mix (`--mix browse=40,get=40,...`).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context as _};
use serde::Serialize;

/// One kind of API call the load makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `GET /api/v1/pets?limit=20&offset=…`: a page of the catalogue (count + page from
    /// PostgreSQL).
    Browse,
    /// `GET /api/v1/pets/{id}`: one pet, usually from the Redis cache.
    Get,
    /// `POST /api/v1/auth/login` as one of the load's users (an argon2 verification).
    Login,
    /// `POST /api/v1/store/orders` with an `Idempotency-Key`, retried with the same key until
    /// it gets a definite answer.
    Order,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 4] = [Kind::Browse, Kind::Get, Kind::Login, Kind::Order];

    /// The name used in `--mix`, tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Browse => "browse",
            Kind::Get => "get",
            Kind::Login => "login",
            Kind::Order => "order",
        }
    }

    /// Whether a failed request of this kind may be sent again without changing the outcome:
    /// GETs, and orders because they carry an `Idempotency-Key`. A login is a POST without
    /// one (it issues new tokens), so the balancer only retries it if it never reached a node.
    pub fn idempotent(self) -> bool {
        !matches!(self, Kind::Login)
    }
}

impl FromStr for Kind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .with_context(|| format!("unknown request kind {s:?} (browse, get, login, order)"))
    }
}

/// Relative weights of the kinds; a request's kind is drawn from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Kinds with a weight above 0, in the order given.
    weights: Vec<(Kind, u32)>,
    /// The sum of the weights (at least 1).
    total: u32,
}

impl Mix {
    /// The kind for a uniformly drawn `roll` (any `u32`; reduced modulo the total weight).
    pub fn pick(&self, roll: u32) -> Kind {
        let mut roll = roll % self.total;
        for (kind, weight) in &self.weights {
            if roll < *weight {
                return *kind;
            }
            roll -= weight;
        }
        unreachable!("roll is below the total weight")
    }

    /// Whether any request of `kind` can be drawn.
    pub fn contains(&self, kind: Kind) -> bool {
        self.weights.iter().any(|(k, _)| *k == kind)
    }
}

impl Default for Mix {
    /// Mostly reads, some orders, a few logins: `browse=40,get=40,order=15,login=5`.
    fn default() -> Self {
        "browse=40,get=40,order=15,login=5"
            .parse()
            .expect("the default mix parses")
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;

    /// `kind=weight` pairs separated by commas; weights are whole numbers, 0 leaves a kind
    /// out, and a kind may appear once.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut weights: Vec<(Kind, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .with_context(|| format!("{part:?} is not kind=weight"))?;
            let kind: Kind = kind.trim().parse()?;
            let weight: u32 = weight
                .trim()
                .parse()
                .with_context(|| format!("weight of {} is not a whole number", kind.name()))?;
            if weights.iter().any(|(k, _)| *k == kind) {
                bail!("{} appears twice in the mix", kind.name());
            }
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        let total = weights.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            bail!("the mix {s:?} has no kind with a weight above 0");
        }
        Ok(Self { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(kind, weight)| format!("{}={weight}", kind.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_draws_each_kind_in_proportion_to_its_weight() {
        let mix: Mix = "browse=3, order=1, login=0".parse().unwrap();
        let drawn: Vec<Kind> = (0..8).map(|roll| mix.pick(roll)).collect();
        assert_eq!(drawn.iter().filter(|k| **k == Kind::Browse).count(), 6);
        assert_eq!(drawn.iter().filter(|k| **k == Kind::Order).count(), 2);
        assert!(!mix.contains(Kind::Login));
        assert_eq!(mix.to_string(), "browse=3,order=1");
    }

    #[test]
    fn a_mix_refuses_unknown_kinds_repeats_and_zero_totals() {
        assert!("browse=1,fly=2".parse::<Mix>().is_err());
        assert!("get=1,get=2".parse::<Mix>().is_err());
        assert!("get=0".parse::<Mix>().is_err());
        assert!("get=x".parse::<Mix>().is_err());
    }
}
