//! Who may do what: users, roles, permissions and tokens, kept in the
//! replicated state and changed only through the log (like etcd's auth).
//! (The rules are 550 lines; their tests, at and past every limit, make
//! the file longer.)
//!
//! Pure and deterministic: [`AuthState::apply`] turns one [`AuthChange`]
//! into the next state, and [`AuthState::check`] decides whether a
//! [`Principal`] may take an [`Action`] at a given time. Every replica
//! runs both on the same log, so a change (a revocation, say) takes effect
//! at one log index everywhere. The host verifies secrets (token hashes,
//! certificates) before a principal is named in an entry; this module sees
//! only names and ids.
//!
//! Permissions:
//! - `admin`: deploy, promote, membership and auth changes, the audit
//!   trail; implies every other permission;
//! - `write:<pattern>`: commands to the actors the pattern matches;
//! - `read:<pattern>`: queries of those actors.
//!
//! A pattern is an actor name, a prefix ending in `*`, or `*` alone.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The role every group has, granting `admin`; it cannot be changed.
pub const ADMIN_ROLE: &str = "admin";
/// Longest user, role or token id name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Most users a group holds.
pub const USERS_MAX: usize = 10_000;
/// Most roles a group holds.
pub const ROLES_MAX: usize = 1_000;
/// Most permissions one role holds.
pub const PERMISSIONS_PER_ROLE_MAX: usize = 100;
/// Most roles one user holds.
pub const ROLES_PER_USER_MAX: usize = 32;
/// Most live tokens a group holds.
pub const TOKENS_MAX: usize = 10_000;
/// Most revoked certificate fingerprints a group remembers.
pub const REVOKED_CERTS_MAX: usize = 10_000;
/// Most module hashes on a group's allow-list.
pub const ALLOWED_MODULES_MAX: usize = 1_000;

/// What a permission applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// Everything.
    Admin,
    /// Commands to actors matching the pattern.
    Write(String),
    /// Queries of actors matching the pattern.
    Read(String),
}

impl Permission {
    /// Parse `admin`, `write:<pattern>` or `read:<pattern>`.
    pub fn parse(s: &str) -> Result<Permission, String> {
        let p = match s.split_once(':') {
            None if s == "admin" => Permission::Admin,
            Some(("write", pattern)) => Permission::Write(pattern.to_string()),
            Some(("read", pattern)) => Permission::Read(pattern.to_string()),
            _ => {
                return Err(format!(
                    "bad permission {s:?}: use admin, write:<actor pattern> or read:<actor pattern>"
                ));
            }
        };
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<(), String> {
        let pattern = match self {
            Permission::Admin => return Ok(()),
            Permission::Write(p) | Permission::Read(p) => p,
        };
        let stem = pattern.strip_suffix('*').unwrap_or(pattern);
        let ok = pattern.len() <= NAME_BYTES_MAX
            && !pattern.is_empty()
            && stem
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "bad actor pattern {pattern:?}: an actor name, a prefix ending in '*', or '*'"
            ))
        }
    }

    fn matches(pattern: &str, actor: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) => actor.starts_with(prefix),
            None => pattern == actor,
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Permission::Admin => write!(f, "admin"),
            Permission::Write(p) => write!(f, "write:{p}"),
            Permission::Read(p) => write!(f, "read:{p}"),
        }
    }
}

/// Who asked for something, as the node that took the request verified
/// it: a user, and the token or certificate it proved itself with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The user.
    pub user: String,
    /// The token it presented (its id), if it used one.
    #[serde(default)]
    pub token: Option<String>,
    /// The fingerprint (BLAKE3 of the DER) of the client certificate it
    /// presented, if it used one.
    #[serde(default, with = "serde_bytes")]
    pub cert: Option<Vec<u8>>,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.user)?;
        match (&self.token, &self.cert) {
            (Some(t), _) => write!(f, " (token {t})"),
            (None, Some(_)) => write!(f, " (certificate)"),
            (None, None) => Ok(()),
        }
    }
}

/// What a request would do, for [`AuthState::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// A command to this actor.
    Write(&'a str),
    /// A query of this actor.
    Read(&'a str),
    /// Deploy, promote, membership, auth changes, the audit trail.
    Admin,
    /// Node status (any known user).
    Status,
}

/// A token: a secret whose hash alone is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The user it stands for.
    pub user: String,
    /// BLAKE3 of the secret.
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    /// When it stops being valid (ms since the Unix epoch; 0: never).
    pub expires_ms: u64,
}

/// The replicated auth state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// Whether requests are checked. Before, anyone the transport lets in
    /// may do anything (a node with TLS lets in only clients with a
    /// certificate of its client CA).
    pub enabled: bool,
    /// Users and their roles.
    pub users: BTreeMap<String, BTreeSet<String>>,
    /// Roles and their permissions (the admin role is implicit).
    pub roles: BTreeMap<String, BTreeSet<Permission>>,
    /// Live tokens by id.
    pub tokens: BTreeMap<String, Token>,
    /// Fingerprints of client certificates no longer accepted.
    pub revoked_certs: BTreeSet<serde_bytes::ByteBuf>,
    /// When set, only modules with these hashes may be deployed.
    pub allowed_modules: Option<BTreeSet<serde_bytes::ByteBuf>>,
}

/// A change to the auth state (a log entry's payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    /// Start checking requests (refused unless a user holds `admin`).
    Enable,
    /// Stop checking requests.
    Disable,
    /// Add a user (or replace its roles).
    UserAdd {
        /// User name.
        name: String,
        /// Its roles.
        roles: BTreeSet<String>,
    },
    /// Remove a user and its tokens.
    UserRemove {
        /// User name.
        name: String,
    },
    /// Give a role a permission (creating the role).
    RoleGrant {
        /// Role name.
        role: String,
        /// The permission.
        permission: Permission,
    },
    /// Take a permission from a role (a role left with none is removed).
    RoleRevoke {
        /// Role name.
        role: String,
        /// The permission.
        permission: Permission,
    },
    /// A new token (its secret stays with whoever asked for it).
    TokenCreate {
        /// Token id.
        id: String,
        /// The token.
        token: Token,
    },
    /// Revoke a token.
    TokenRevoke {
        /// Token id.
        id: String,
    },
    /// Stop accepting a client certificate.
    CertRevoke {
        /// BLAKE3 of its DER.
        #[serde(with = "serde_bytes")]
        fingerprint: Vec<u8>,
    },
    /// Allow deploying a module hash (turns the allow-list on).
    ModuleAllow {
        /// The component hash.
        #[serde(with = "serde_bytes")]
        hash: Vec<u8>,
    },
    /// Turn the module allow-list off (any module may be deployed).
    ModulesAny,
}

impl std::fmt::Display for AuthChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthChange::Enable => write!(f, "auth enable"),
            AuthChange::Disable => write!(f, "auth disable"),
            AuthChange::UserAdd { name, roles } => {
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                write!(f, "user add {name} (roles: {})", roles.join(", "))
            }
            AuthChange::UserRemove { name } => write!(f, "user remove {name}"),
            AuthChange::RoleGrant { role, permission } => {
                write!(f, "role grant {role} {permission}")
            }
            AuthChange::RoleRevoke { role, permission } => {
                write!(f, "role revoke {role} {permission}")
            }
            AuthChange::TokenCreate { id, token } => {
                write!(f, "token create {id} for {}", token.user)
            }
            AuthChange::TokenRevoke { id } => write!(f, "token revoke {id}"),
            AuthChange::CertRevoke { fingerprint } => {
                write!(f, "certificate revoke {}", hex(fingerprint))
            }
            AuthChange::ModuleAllow { hash } => write!(f, "module allow {}", hex(hash)),
            AuthChange::ModulesAny => write!(f, "modules any"),
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a request is not allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Nobody (or an unknown, expired or revoked identity) asked.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A known user without the permission.
    #[error("permission denied: {0}")]
    Permission(String),
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'@');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad {what} name {name:?}: 1-{NAME_BYTES_MAX} characters of letters, digits, '-', '_', '.', '@'"
        ))
    }
}

fn bounded(what: &str, len: usize, limit_name: &str, limit: usize) -> Result<(), String> {
    if len > limit {
        Err(format!("{what}: at most {limit_name} = {limit}"))
    } else {
        Ok(())
    }
}

impl AuthState {
    /// The state after `change`, or why it is refused (a deterministic
    /// refusal: the state stays as it was). `now_ms` is the entry's time.
    pub fn apply(&self, change: &AuthChange, now_ms: u64) -> Result<AuthState, String> {
        let mut next = self.clone();
        match change {
            AuthChange::Enable => {
                if !next.users.keys().any(|u| next.has(u, &Permission::Admin)) {
                    return Err(
                        "no user holds the admin role: add one first (`auth user add NAME --role admin`), or nobody could change auth again"
                            .into(),
                    );
                }
                next.enabled = true;
            }
            AuthChange::Disable => next.enabled = false,
            AuthChange::UserAdd { name, roles } => {
                check_name("user", name)?;
                bounded(
                    "roles of a user",
                    roles.len(),
                    "ROLES_PER_USER_MAX",
                    ROLES_PER_USER_MAX,
                )?;
                for r in roles {
                    check_name("role", r)?;
                    if r != ADMIN_ROLE && !next.roles.contains_key(r) {
                        return Err(format!("no role {r:?}: grant it a permission first"));
                    }
                }
                if !next.users.contains_key(name) {
                    bounded("users", next.users.len() + 1, "USERS_MAX", USERS_MAX)?;
                }
                next.users.insert(name.clone(), roles.clone());
                next.keep_an_admin()?;
            }
            AuthChange::UserRemove { name } => {
                if next.users.remove(name).is_none() {
                    return Err(format!("no user {name:?}"));
                }
                next.tokens.retain(|_, t| &t.user != name);
                next.keep_an_admin()?;
            }
            AuthChange::RoleGrant { role, permission } => {
                check_name("role", role)?;
                permission.validate()?;
                if role == ADMIN_ROLE {
                    return Err("the admin role is fixed (it holds admin)".into());
                }
                if !next.roles.contains_key(role) {
                    bounded("roles", next.roles.len() + 1, "ROLES_MAX", ROLES_MAX)?;
                }
                let perms = next.roles.entry(role.clone()).or_default();
                perms.insert(permission.clone());
                bounded(
                    "permissions of a role",
                    perms.len(),
                    "PERMISSIONS_PER_ROLE_MAX",
                    PERMISSIONS_PER_ROLE_MAX,
                )?;
            }
            AuthChange::RoleRevoke { role, permission } => {
                let Some(perms) = next.roles.get_mut(role) else {
                    return Err(format!("no role {role:?}"));
                };
                if !perms.remove(permission) {
                    return Err(format!("role {role:?} does not hold {permission}"));
                }
                if perms.is_empty() {
                    if next.users.values().any(|roles| roles.contains(role)) {
                        return Err(format!(
                            "role {role:?} would have no permission left while users hold it: \
                             take it from them first"
                        ));
                    }
                    next.roles.remove(role);
                }
                next.keep_an_admin()?;
            }
            AuthChange::TokenCreate { id, token } => {
                check_name("token", id)?;
                if !next.users.contains_key(&token.user) {
                    return Err(format!("no user {:?}", token.user));
                }
                if next.tokens.contains_key(id) {
                    return Err(format!("token {id:?} exists"));
                }
                if token.expires_ms != 0 && token.expires_ms <= now_ms {
                    return Err("the token would be expired already".into());
                }
                // Expired tokens make room.
                next.tokens
                    .retain(|_, t| t.expires_ms == 0 || t.expires_ms > now_ms);
                bounded("tokens", next.tokens.len() + 1, "TOKENS_MAX", TOKENS_MAX)?;
                next.tokens.insert(id.clone(), token.clone());
            }
            AuthChange::TokenRevoke { id } => {
                if next.tokens.remove(id).is_none() {
                    return Err(format!("no token {id:?}"));
                }
            }
            AuthChange::CertRevoke { fingerprint } => {
                if fingerprint.len() != 32 {
                    return Err("a certificate fingerprint is 32 bytes (BLAKE3 of its DER)".into());
                }
                next.revoked_certs
                    .insert(serde_bytes::ByteBuf::from(fingerprint.clone()));
                bounded(
                    "revoked certificates",
                    next.revoked_certs.len(),
                    "REVOKED_CERTS_MAX",
                    REVOKED_CERTS_MAX,
                )?;
            }
            AuthChange::ModuleAllow { hash } => {
                if hash.len() != 32 {
                    return Err("a module hash is 32 bytes".into());
                }
                let list = next.allowed_modules.get_or_insert_with(Default::default);
                list.insert(serde_bytes::ByteBuf::from(hash.clone()));
                bounded(
                    "allowed modules",
                    list.len(),
                    "ALLOWED_MODULES_MAX",
                    ALLOWED_MODULES_MAX,
                )?;
            }
            AuthChange::ModulesAny => next.allowed_modules = None,
        }
        Ok(next)
    }

    /// With auth on, some user must keep `admin`: else nobody could ever
    /// change auth again.
    fn keep_an_admin(&self) -> Result<(), String> {
        if self.enabled && !self.users.keys().any(|u| self.has(u, &Permission::Admin)) {
            return Err("no user would hold admin any more while auth is enabled".into());
        }
        Ok(())
    }

    /// Whether `user` holds `wanted` through one of its roles.
    fn has(&self, user: &str, wanted: &Permission) -> bool {
        let Some(roles) = self.users.get(user) else {
            return false;
        };
        roles.iter().any(|r| {
            if r == ADMIN_ROLE {
                return true;
            }
            self.roles.get(r).is_some_and(|perms| {
                perms.iter().any(|p| match (p, wanted) {
                    (Permission::Admin, _) => true,
                    (Permission::Write(pat), Permission::Write(actor))
                    | (Permission::Read(pat), Permission::Read(actor)) => {
                        Permission::matches(pat, actor)
                    }
                    _ => false,
                })
            })
        })
    }

    /// Who `principal` is, if it still is: a known user, with a live token
    /// of its own or a certificate not revoked. `now_ms` decides expiry.
    pub fn authenticate(&self, principal: &Principal, now_ms: u64) -> Result<(), Denied> {
        if !self.users.contains_key(&principal.user) {
            return Err(Denied::Unauthenticated(format!(
                "no user {:?} in this group",
                principal.user
            )));
        }
        if let Some(id) = &principal.token {
            match self.tokens.get(id) {
                Some(t) if t.user == principal.user => {
                    if t.expires_ms != 0 && t.expires_ms <= now_ms {
                        return Err(Denied::Unauthenticated(format!("token {id} expired")));
                    }
                }
                _ => {
                    return Err(Denied::Unauthenticated(format!(
                        "token {id} is revoked or unknown"
                    )));
                }
            }
        }
        if let Some(fp) = &principal.cert
            && self
                .revoked_certs
                .contains(&serde_bytes::ByteBuf::from(fp.clone()))
        {
            return Err(Denied::Unauthenticated(
                "the client certificate is revoked".into(),
            ));
        }
        Ok(())
    }

    /// May `principal` (`None`: nobody proved who it is) take `action` at
    /// `now_ms`? Always yes while auth is disabled.
    pub fn check(
        &self,
        principal: Option<&Principal>,
        action: Action<'_>,
        now_ms: u64,
    ) -> Result<(), Denied> {
        if !self.enabled {
            return Ok(());
        }
        let Some(p) = principal else {
            return Err(Denied::Unauthenticated(
                "auth is enabled: present a token (--token) or a client certificate".into(),
            ));
        };
        self.authenticate(p, now_ms)?;
        let (wanted, what) = match action {
            Action::Status => return Ok(()),
            Action::Admin => (Permission::Admin, "admin".to_string()),
            Action::Write(actor) => (
                Permission::Write(actor.to_string()),
                format!("write:{actor}"),
            ),
            Action::Read(actor) => (Permission::Read(actor.to_string()), format!("read:{actor}")),
        };
        if self.has(&p.user, &wanted) {
            Ok(())
        } else {
            Err(Denied::Permission(format!(
                "user {:?} does not hold {what}",
                p.user
            )))
        }
    }

    /// Whether a module of `hash` may be deployed.
    pub fn module_allowed(&self, hash: &[u8]) -> bool {
        self.allowed_modules
            .as_ref()
            .is_none_or(|list| list.contains(&serde_bytes::ByteBuf::from(hash.to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Principal {
        Principal {
            user: name.into(),
            token: None,
            cert: None,
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn group() -> AuthState {
        let mut s = AuthState::default();
        for c in [
            AuthChange::RoleGrant {
                role: "orders-writer".into(),
                permission: Permission::parse("write:orders*").unwrap(),
            },
            AuthChange::RoleGrant {
                role: "reader".into(),
                permission: Permission::parse("read:*").unwrap(),
            },
            AuthChange::UserAdd {
                name: "root".into(),
                roles: set(&["admin"]),
            },
            AuthChange::UserAdd {
                name: "w".into(),
                roles: set(&["orders-writer"]),
            },
            AuthChange::UserAdd {
                name: "r".into(),
                roles: set(&["reader"]),
            },
            AuthChange::Enable,
        ] {
            s = s.apply(&c, 0).unwrap();
        }
        s
    }

    #[test]
    fn roles_decide_what_each_user_may_do() {
        let s = group();
        let ok = |who: &str, a| s.check(Some(&user(who)), a, 0).is_ok();
        assert!(ok("root", Action::Admin) && ok("root", Action::Write("x")));
        assert!(ok("w", Action::Write("orders")) && ok("w", Action::Write("orders-eu")));
        assert!(
            !ok("w", Action::Write("billing")),
            "a writer of one actor cannot write another"
        );
        assert!(!ok("w", Action::Read("orders")) && !ok("w", Action::Admin));
        assert!(ok("r", Action::Read("anything")) && !ok("r", Action::Write("orders")));
        assert!(!ok("r", Action::Admin), "a reader cannot deploy or promote");
        assert!(ok("r", Action::Status));
        assert!(matches!(
            s.check(None, Action::Status, 0),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            s.check(Some(&user("nobody")), Action::Status, 0),
            Err(Denied::Unauthenticated(_))
        ));
        // Disabled: everything goes.
        let off = s.apply(&AuthChange::Disable, 0).unwrap();
        assert!(off.check(None, Action::Admin, 0).is_ok());
    }

    #[test]
    fn tokens_expire_and_are_revoked_at_one_point() {
        let s = group()
            .apply(
                &AuthChange::TokenCreate {
                    id: "t1".into(),
                    token: Token {
                        user: "w".into(),
                        hash: vec![1; 32],
                        expires_ms: 1_000,
                    },
                },
                0,
            )
            .unwrap();
        let p = Principal {
            token: Some("t1".into()),
            ..user("w")
        };
        assert!(s.check(Some(&p), Action::Write("orders"), 999).is_ok());
        assert!(
            s.check(Some(&p), Action::Write("orders"), 1_000).is_err(),
            "expired at its time"
        );
        let revoked = s
            .apply(&AuthChange::TokenRevoke { id: "t1".into() }, 0)
            .unwrap();
        assert!(revoked.check(Some(&p), Action::Write("orders"), 0).is_err());
        // Another user's token does not stand for this one.
        let q = Principal {
            token: Some("t1".into()),
            ..user("r")
        };
        assert!(s.check(Some(&q), Action::Read("x"), 0).is_err());
        // Removing a user removes its tokens.
        let gone = s
            .apply(&AuthChange::UserRemove { name: "w".into() }, 0)
            .unwrap();
        assert!(gone.tokens.is_empty());
    }

    #[test]
    fn auth_cannot_lock_everyone_out() {
        let empty = AuthState::default();
        assert!(empty.apply(&AuthChange::Enable, 0).is_err(), "no admin yet");
        let s = group();
        assert!(
            s.apply(
                &AuthChange::UserRemove {
                    name: "root".into()
                },
                0
            )
            .is_err()
        );
        assert!(
            s.apply(
                &AuthChange::UserAdd {
                    name: "root".into(),
                    roles: set(&["reader"])
                },
                0
            )
            .is_err()
        );
        assert!(
            s.apply(
                &AuthChange::UserAdd {
                    name: "x".into(),
                    roles: set(&["no-such-role"])
                },
                0
            )
            .is_err()
        );
    }

    #[test]
    fn names_patterns_and_limits_are_checked_at_and_one_past() {
        assert!(Permission::parse("write:orders*").is_ok());
        assert!(Permission::parse("read:*").is_ok());
        assert!(Permission::parse("write:Orders").is_err());
        assert!(Permission::parse("delete:x").is_err());
        let at = "a".repeat(NAME_BYTES_MAX);
        let past = "a".repeat(NAME_BYTES_MAX + 1);
        let add = |name: &str| AuthChange::UserAdd {
            name: name.into(),
            roles: BTreeSet::new(),
        };
        assert!(AuthState::default().apply(&add(&at), 0).is_ok());
        assert!(AuthState::default().apply(&add(&past), 0).is_err());
        let mut s = AuthState::default();
        for i in 0..ROLES_PER_USER_MAX + 1 {
            s = s
                .apply(
                    &AuthChange::RoleGrant {
                        role: format!("r{i}"),
                        permission: Permission::Read("*".into()),
                    },
                    0,
                )
                .unwrap();
        }
        let roles = |n: usize| AuthChange::UserAdd {
            name: "u".into(),
            roles: (0..n).map(|i| format!("r{i}")).collect(),
        };
        assert!(s.apply(&roles(ROLES_PER_USER_MAX), 0).is_ok());
        assert!(s.apply(&roles(ROLES_PER_USER_MAX + 1), 0).is_err());
    }

    #[test]
    fn users_and_tokens_are_bounded_at_and_one_past() {
        let full = |n: usize| {
            let mut s = AuthState::default();
            for i in 0..n {
                s.users.insert(format!("u{i}"), BTreeSet::new());
            }
            s
        };
        let add = AuthChange::UserAdd {
            name: "new".into(),
            roles: BTreeSet::new(),
        };
        assert!(
            full(USERS_MAX - 1).apply(&add, 0).is_ok(),
            "the last one fits"
        );
        assert!(full(USERS_MAX).apply(&add, 0).is_err(), "one past");
        let token = |id: &str, expires_ms| AuthChange::TokenCreate {
            id: id.into(),
            token: Token {
                user: "u0".into(),
                hash: vec![0; 32],
                expires_ms,
            },
        };
        let mut s = full(1);
        for i in 0..TOKENS_MAX - 1 {
            s.tokens.insert(
                format!("t{i}"),
                Token {
                    user: "u0".into(),
                    hash: vec![0; 32],
                    expires_ms: 100,
                },
            );
        }
        let at = s.apply(&token("last", 0), 0).unwrap();
        assert_eq!(at.tokens.len(), TOKENS_MAX);
        assert!(at.apply(&token("past", 0), 0).is_err(), "one past");
        // Expired tokens make room.
        assert_eq!(at.apply(&token("later", 0), 100).unwrap().tokens.len(), 2);
    }

    #[test]
    fn roles_permissions_revocations_and_allowed_modules_are_bounded_at_and_one_past() {
        let grant = |role: &str, p: &str| AuthChange::RoleGrant {
            role: role.into(),
            permission: Permission::Read(p.into()),
        };
        // Roles.
        let mut s = AuthState::default();
        for i in 0..ROLES_MAX - 1 {
            s.roles
                .insert(format!("r{i}"), BTreeSet::from([Permission::Admin]));
        }
        let at = s.apply(&grant("last", "*"), 0).unwrap();
        assert_eq!(at.roles.len(), ROLES_MAX);
        assert!(at.apply(&grant("past", "*"), 0).is_err());
        // Permissions of one role.
        let mut s = AuthState::default();
        let perms: BTreeSet<Permission> = (0..PERMISSIONS_PER_ROLE_MAX - 1)
            .map(|i| Permission::Read(format!("a{i}")))
            .collect();
        s.roles.insert("r".into(), perms);
        let at = s.apply(&grant("r", "last"), 0).unwrap();
        assert_eq!(at.roles["r"].len(), PERMISSIONS_PER_ROLE_MAX);
        assert!(at.apply(&grant("r", "past"), 0).is_err());
        // Revoked certificates.
        let mut s = AuthState::default();
        for i in 0..REVOKED_CERTS_MAX - 1 {
            let mut fp = vec![0u8; 32];
            fp[..8].copy_from_slice(&(i as u64).to_be_bytes());
            s.revoked_certs.insert(serde_bytes::ByteBuf::from(fp));
        }
        let revoke = |b: u8| AuthChange::CertRevoke {
            fingerprint: vec![b; 32],
        };
        let at = s.apply(&revoke(0xfe), 0).unwrap();
        assert_eq!(at.revoked_certs.len(), REVOKED_CERTS_MAX);
        assert!(at.apply(&revoke(0xff), 0).is_err());
        // Allowed modules.
        let mut s = AuthState::default();
        let mut list = BTreeSet::new();
        for i in 0..ALLOWED_MODULES_MAX - 1 {
            let mut h = vec![0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_be_bytes());
            list.insert(serde_bytes::ByteBuf::from(h));
        }
        s.allowed_modules = Some(list);
        let allow = |b: u8| AuthChange::ModuleAllow { hash: vec![b; 32] };
        let at = s.apply(&allow(0xfe), 0).unwrap();
        assert!(at.apply(&allow(0xff), 0).is_err());
    }

    #[test]
    fn the_module_allow_list_is_off_until_a_hash_is_allowed() {
        let s = AuthState::default();
        assert!(s.module_allowed(&[7; 32]));
        let s = s
            .apply(&AuthChange::ModuleAllow { hash: vec![1; 32] }, 0)
            .unwrap();
        assert!(s.module_allowed(&[1; 32]) && !s.module_allowed(&[7; 32]));
        assert!(
            s.apply(&AuthChange::ModulesAny, 0)
                .unwrap()
                .module_allowed(&[7; 32])
        );
    }
}
