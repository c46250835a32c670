//! Topic offsets as the protocol writes them: `<epoch>:<seq>`.

/// A topic offset: the epoch and the sequence number within it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offset {
    /// Random id of the topic's current history.
    pub epoch: String,
    /// Consecutive from 1 within the epoch.
    pub seq: u64,
}

impl Offset {
    /// Parses `<epoch>:<seq>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.rsplit_once(':')?;
        Some(Self {
            epoch: epoch.to_owned(),
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_epoch_and_sequence() {
        let offset = Offset::parse("k3j2:17").unwrap();
        assert_eq!(offset.epoch, "k3j2");
        assert_eq!(offset.seq, 17);
        assert_eq!(offset.to_string(), "k3j2:17");
        assert!(Offset::parse("17").is_none());
    }
}
