//! Upkeep: the periodic refresh of this node's presence entries, room counts and sessions
//! (which also purges a dead node's, with `left` events or a new count), and the figures
//! behind the cluster's totals.

use super::*;

impl Node {
    // ----- refresh and totals -----------------------------------------------------------------

    /// Every third of the presence TTL: this node's presence entries and sessions are
    /// refreshed (and expired ones of dead nodes purged, with `left` events); every second its
    /// figures for the cluster's totals.
    pub(super) async fn refresher(self: Rc<Self>) {
        let every = Duration::from_millis(self.config.presence_ttl_secs * 1000 / 3);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_refresh = Instant::now();
        loop {
            tick.tick().await;
            self.report();
            if last_refresh.elapsed() >= every {
                last_refresh = Instant::now();
                self.refresh();
            }
        }
    }

    pub(super) fn refresh(self: &Rc<Self>) {
        let expiry = self.expiry().to_string();
        let now = now_ms().to_string();
        let st = self.state.borrow();
        for (room, r) in &st.rooms {
            let rule = self.config.rule(room);
            if rule.presence != PresenceMode::List {
                // One count per node and room, whatever its members.
                let (me, room) = (self.clone(), room.clone());
                self.spawn(async move {
                    me.occupancy(&room).await;
                });
                continue;
            }
            let (pz, pu) = self.keys.presence(room);
            let mut args = vec![
                expiry.clone(),
                now.clone(),
                self.keys.channel(&Stream::Room(room.clone())),
                self.publish_cmd().to_owned(),
                room.to_string(),
                self.list(&rule),
            ];
            args.extend(
                (r.members.iter()).map(|(conn, (user, _))| format!("{user} {}", conn.raw())),
            );
            self.run_later(|s| &s.refresh, vec![pz, pu], args);
        }
        for (user, u) in &st.users {
            let (conns, online) = self.keys.sessions(user);
            let mut args = vec![expiry.clone(), u.sessions.len().to_string()];
            args.extend(
                u.sessions
                    .iter()
                    .chain(u.online.iter())
                    .map(|c| c.raw().to_string()),
            );
            self.run_later(|s| &s.sessions, vec![conns, online], args);
        }
    }

    /// Runs one of the scripts in the background, on owned keys and arguments.
    pub(super) fn run_later(
        self: &Rc<Self>,
        which: fn(&Scripts) -> &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) {
        let me = self.clone();
        self.spawn(async move {
            let mut inv = which(&me.scripts).prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a);
            }
            me.script::<i64>(&inv).await;
        });
    }

    /// Writes this node's figures for the cluster totals.
    pub(super) fn report(self: &Rc<Self>) {
        let (connections, rooms) = {
            let st = self.state.borrow();
            let conns: usize = st.users.values().map(|u| u.sessions.len()).sum();
            (conns, st.rooms.len())
        };
        let figures = serde_json::json!({
            "ts": now_ms(), "connections": connections, "rooms": rooms,
        });
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.nodes())
            .arg(self.node)
            .arg(figures.to_string());
        let me = self.clone();
        self.spawn(async move {
            me.query::<u64>(cmd).await;
        });
    }

    /// The live nodes' latest figures, summed (a node silent for a presence TTL is gone).
    pub(super) async fn totals(self: &Rc<Self>) -> Option<serde_json::Value> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.nodes());
        let all: Vec<(u64, String)> = self.query(cmd).await?;
        let fresh = now_ms().saturating_sub(self.config.presence_ttl_secs * 1000);
        let (mut nodes, mut connections) = (Vec::new(), 0);
        for (node, figures) in all {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&figures) else {
                continue;
            };
            if v["ts"].as_u64().unwrap_or(0) < fresh {
                continue;
            }
            nodes.push(node);
            connections += v["connections"].as_u64().unwrap_or(0);
        }
        nodes.sort_unstable();
        Some(serde_json::json!({
            "node": self.node,
            "nodes": nodes.len(),
            "node_ids": nodes,
            "connections": connections,
        }))
    }
}
