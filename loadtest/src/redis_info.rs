//! Reading a cluster's Redis with `INFO all` over a plain RESP connection: its CPU seconds, the
//! commands it has processed (in total and per command) and its memory.
//!
//! Owns the RESP exchange (AUTH, INFO) and the parsing of INFO's text. It must not change
//! anything in Redis, and turning two samples into per-publish figures is `report`'s job. The
//! bot needs only this one command, so it speaks RESP itself rather than pulling in a client.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// How long connecting to Redis and reading INFO may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Commands the bot itself sends to read INFO; left out of the counts.
const OWN_COMMANDS: &[&str] = &["info", "auth"];

/// Where a Redis is, and how to log in.
#[derive(Clone, Debug)]
pub struct RedisProbe {
    pub addr: SocketAddr,
    password: Option<String>,
}

/// One reading of a Redis's counters.
#[derive(Clone, Debug, Default)]
pub struct RedisSample {
    pub at: Option<Instant>,
    /// `used_cpu_sys + used_cpu_user`: every thread of the server, in seconds.
    pub cpu_seconds: f64,
    /// `total_commands_processed`, including commands run inside scripts.
    pub total_commands: u64,
    /// `cmdstat_NAME:calls=` and `usec=` by command name.
    pub calls: BTreeMap<String, CommandStat>,
    /// `used_memory`: the dataset and Redis's own structures, in bytes.
    pub used_memory: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommandStat {
    pub calls: u64,
    pub usec: u64,
}

impl RedisSample {
    /// Commands processed since `earlier`, without the bot's own INFO and AUTH.
    pub fn commands_since(&self, earlier: &RedisSample) -> u64 {
        let own: u64 = OWN_COMMANDS
            .iter()
            .map(|c| self.calls_since(earlier, c).calls)
            .sum();
        self.total_commands
            .saturating_sub(earlier.total_commands)
            .saturating_sub(own)
    }

    /// One command's calls and time since `earlier`.
    pub fn calls_since(&self, earlier: &RedisSample, name: &str) -> CommandStat {
        let now = self.calls.get(name).copied().unwrap_or_default();
        let then = earlier.calls.get(name).copied().unwrap_or_default();
        CommandStat {
            calls: now.calls.saturating_sub(then.calls),
            usec: now.usec.saturating_sub(then.usec),
        }
    }

    /// Every command that ran since `earlier` (the bot's own left out), most calls first.
    pub fn busiest_since(&self, earlier: &RedisSample) -> Vec<(String, CommandStat)> {
        let mut out: Vec<(String, CommandStat)> = self
            .calls
            .keys()
            .filter(|name| !OWN_COMMANDS.contains(&name.as_str()))
            .map(|name| (name.clone(), self.calls_since(earlier, name)))
            .filter(|(_, s)| s.calls > 0)
            .collect();
        out.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

impl RedisProbe {
    /// Parses `redis://[[user]:password@]host:port[/db]` (loopback hosts only).
    pub fn parse(url: &str) -> anyhow::Result<RedisProbe> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| anyhow!("--redis-url must start with redis:// (got {url:?})"))?;
        let rest = rest.split('/').next().unwrap_or("");
        let (password, hostport) = match rest.rsplit_once('@') {
            Some((cred, hp)) => {
                let pass = cred.split_once(':').map_or(cred, |(_, p)| p);
                (Some(pass.to_string()).filter(|p| !p.is_empty()), hp)
            }
            None => (None, rest),
        };
        Ok(RedisProbe {
            addr: crate::client::loopback_addr(hostport, "--redis-url", url)?,
            password,
        })
    }

    pub fn from_addr(addr: SocketAddr) -> RedisProbe {
        RedisProbe {
            addr,
            password: None,
        }
    }

    /// Answers whether Redis replies to PING now.
    pub fn ping(&self) -> bool {
        self.connect()
            .and_then(|mut c| command(&mut c, &["PING"]))
            .is_ok_and(|r| r == "PONG")
    }

    /// Reads INFO now. Blocks for at most a few milliseconds on loopback.
    pub fn sample(&self) -> anyhow::Result<RedisSample> {
        let mut conn = self.connect()?;
        let text = command(&mut conn, &["INFO", "all"])?;
        let mut s = parse_info(&text)?;
        s.at = Some(Instant::now());
        Ok(s)
    }

    fn connect(&self) -> anyhow::Result<BufReader<TcpStream>> {
        let stream = TcpStream::connect_timeout(&self.addr, TIMEOUT)
            .with_context(|| format!("connect to Redis at {}", self.addr))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut conn = BufReader::new(stream);
        if let Some(p) = &self.password {
            let ok = command(&mut conn, &["AUTH", p]).context("AUTH")?;
            if ok != "OK" {
                bail!("Redis refused AUTH: {ok}");
            }
        }
        Ok(conn)
    }
}

/// Sends one command and reads a simple-string or bulk-string reply.
fn command(conn: &mut BufReader<TcpStream>, args: &[&str]) -> anyhow::Result<String> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    conn.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let line = line.trim_end();
    match line.as_bytes().first() {
        Some(b'+') => Ok(line[1..].to_string()),
        Some(b'-') => bail!("Redis error: {}", &line[1..]),
        Some(b'$') => {
            let len: usize = line[1..]
                .parse()
                .with_context(|| format!("bad bulk length {line:?}"))?;
            let mut buf = vec![0u8; len + 2];
            conn.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        _ => bail!("unexpected Redis reply {line:?}"),
    }
}

/// The fields the bot uses from INFO's `key:value` lines.
fn parse_info(text: &str) -> anyhow::Result<RedisSample> {
    let mut s = RedisSample::default();
    let (mut sys, mut user, mut total) = (None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.trim_end().split_once(':') else {
            continue;
        };
        match key {
            "used_cpu_sys" => sys = value.parse::<f64>().ok(),
            "used_cpu_user" => user = value.parse::<f64>().ok(),
            "total_commands_processed" => total = value.parse::<u64>().ok(),
            "used_memory" => s.used_memory = value.parse().unwrap_or(0),
            _ => {
                if let Some(name) = key.strip_prefix("cmdstat_") {
                    s.calls.insert(name.to_string(), parse_cmdstat(value));
                }
            }
        }
    }
    let (Some(sys), Some(user), Some(total)) = (sys, user, total) else {
        bail!("INFO lacks used_cpu_sys, used_cpu_user or total_commands_processed");
    };
    s.cpu_seconds = sys + user;
    s.total_commands = total;
    Ok(s)
}

/// `calls=3,usec=70,usec_per_call=23.33,...`
fn parse_cmdstat(value: &str) -> CommandStat {
    let mut stat = CommandStat::default();
    for field in value.split(',') {
        match field.split_once('=') {
            Some(("calls", v)) => stat.calls = v.parse().unwrap_or(0),
            Some(("usec", v)) => stat.usec = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    stat
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Stats\r\ntotal_commands_processed:120\r\n# CPU\r\n\
        used_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\nused_cpu_sys_children:9.0\r\n\
        # Memory\r\nused_memory:1048576\r\n# Commandstats\r\n\
        cmdstat_evalsha:calls=30,usec=600,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=2,usec=100,usec_per_call=50.00\r\n\
        cmdstat_client|setname:calls=4,usec=4,usec_per_call=1.00\r\n";

    #[test]
    fn parses_info() {
        let s = parse_info(INFO).unwrap();
        assert_eq!(s.cpu_seconds, 1.75);
        assert_eq!(s.total_commands, 120);
        assert_eq!(s.used_memory, 1 << 20);
        assert_eq!(
            s.calls["evalsha"],
            CommandStat {
                calls: 30,
                usec: 600
            }
        );
        assert_eq!(s.calls["client|setname"].calls, 4);
        assert!(parse_info("# CPU\r\nused_cpu_sys:1\r\n").is_err());
    }

    #[test]
    fn deltas_leave_out_the_bots_own_info() {
        let a = parse_info(INFO).unwrap();
        let b = parse_info(
            &INFO
                .replace("processed:120", "processed:171")
                .replace("calls=30,usec=600", "calls=70,usec=1400")
                .replace("info:calls=2", "info:calls=3"),
        )
        .unwrap();
        assert_eq!(b.commands_since(&a), 50);
        let busiest = b.busiest_since(&a);
        assert_eq!(busiest.len(), 1, "{busiest:?}");
        assert_eq!(
            busiest[0],
            (
                "evalsha".to_string(),
                CommandStat {
                    calls: 40,
                    usec: 800
                }
            )
        );
    }

    #[test]
    fn parses_urls() {
        let p = RedisProbe::parse("redis://:s3cret@127.0.0.1:6390/0").unwrap();
        assert_eq!(p.addr.port(), 6390);
        assert_eq!(p.password.as_deref(), Some("s3cret"));
        let p = RedisProbe::parse("redis://localhost:6379").unwrap();
        assert_eq!(p.password, None);
        assert!(RedisProbe::parse("redis://10.0.0.1:6379").is_err());
        assert!(RedisProbe::parse("rediss://127.0.0.1:6379").is_err());
        assert!(RedisProbe::parse("redis://127.0.0.1").is_err());
    }
}
