//! The Redis key layout, defined here and nowhere else.
//!
//! Every key starts with `petmesh:{cluster}:` so that several clusters can share one Redis.

/// Builds the Redis keys and channel names of one cluster.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    /// `petmesh:{cluster}:`, computed once.
    prefix: String,
}

impl RedisKeys {
    /// The key layout of cluster `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            prefix: format!("petmesh:{cluster}:"),
        }
    }

    /// The prefix shared by every key of this cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Marks one access token (by its `jti`) as revoked; expires with the token.
    pub fn revoked_token(&self, jti: &str) -> String {
        format!("{}auth:revoked-jti:{jti}", self.prefix)
    }

    /// Holds the Unix time in milliseconds before which every access token of a user is revoked
    /// (logout-all, role or status change); expires when the last such token would have.
    pub fn sessions_revoked_before(&self, user_id: &str) -> String {
        format!("{}auth:revoked-before:{user_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_cluster_prefix() {
        let keys = RedisKeys::new("blue");
        assert_eq!(keys.revoked_token("j1"), "petmesh:blue:auth:revoked-jti:j1");
        assert_eq!(
            keys.sessions_revoked_before("u1"),
            "petmesh:blue:auth:revoked-before:u1"
        );
        assert!(RedisKeys::new("green")
            .revoked_token("j1")
            .starts_with("petmesh:green:"));
    }
}
