//! How to reach PostgreSQL: the libpq URL, parsed, shown without its password.

/// How to reach PostgreSQL: the libpq URL, parsed, and a form of it safe
/// to log (the password replaced by `***`).
#[derive(Clone)]
pub struct PostgresAddress {
    pub(super) config: tokio_postgres::Config,
    pub(super) shown: String,
}

impl PostgresAddress {
    /// The connection settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Whether the URL gave a password.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// Sets the password (read from a file: not part of the URL shown).
    pub fn set_password(&mut self, password: &str) {
        self.config.password(password);
    }
}

impl PartialEq for PostgresAddress {
    fn eq(&self, other: &Self) -> bool {
        self.shown == other.shown && self.config.get_password() == other.config.get_password()
    }
}

impl Eq for PostgresAddress {}

impl std::fmt::Debug for PostgresAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::str::FromStr for PostgresAddress {
    type Err = String;

    /// `postgres://USER[:PASSWORD]@HOST[:PORT][,HOST2[:PORT]...]/DBNAME[?OPTIONS]`
    /// (`postgresql://` too), as libpq reads it.
    fn from_str(s: &str) -> Result<Self, String> {
        let form =
            "expected postgres://USER:PASSWORD@HOST[:PORT][,HOST[:PORT]...]/DBNAME[?OPTIONS]";
        let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        else {
            return Err(form.into());
        };
        let config: tokio_postgres::Config = s.parse().map_err(|e| format!("{form}: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err(format!("{form}: no host"));
        }
        if config.get_user().is_none_or(str::is_empty) {
            return Err(format!("{form}: no user"));
        }
        if config.get_dbname().is_none_or(str::is_empty) {
            return Err(format!("{form}: no database name"));
        }
        Ok(Self {
            config,
            shown: redact(rest),
        })
    }
}

/// `postgres://` + `rest` with any password replaced by `***`.
pub(super) fn redact(rest: &str) -> String {
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("postgres://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn urls_are_read_as_libpq_reads_them_and_shown_without_the_password() {
        let address: PostgresAddress =
            "postgres://gifts:s3cr%40t@db1:5433,db2/gifts?target_session_attrs=read-write"
                .parse()
                .unwrap();
        assert_eq!(address.config().get_hosts().len(), 2);
        assert_eq!(address.config().get_ports(), [5433, 5432]);
        assert_eq!(address.config().get_password(), Some(&b"s3cr@t"[..]));
        assert_eq!(address.config().get_dbname(), Some("gifts"));
        let shown = format!("{address:?}");
        assert_eq!(
            shown,
            "postgres://gifts:***@db1:5433,db2/gifts?target_session_attrs=read-write"
        );
        let with_query: PostgresAddress = "postgresql://u@h/d?password=p&application_name=x"
            .parse()
            .unwrap();
        assert_eq!(
            format!("{with_query:?}"),
            "postgres://u@h/d?password=***&application_name=x"
        );
        for wrong in [
            "postgres://",
            "postgres://u:p@/d",
            "postgres://u:p@h",
            "postgres://:p@h/d",
            "mysql://u:p@h/d",
        ] {
            assert!(wrong.parse::<PostgresAddress>().is_err(), "{wrong}");
        }
    }
}
