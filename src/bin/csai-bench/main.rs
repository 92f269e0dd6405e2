//! csai-bench: gRPC load for csai-sidecar, printed beside the floors it cannot beat,
//! measured in the same run: the gRPC round trip alone (`grpc.health.v1` Check) and the
//! same storage operation issued directly to the backend (for a chat turn, the same
//! request sent to the model); also memory and overload runs on a sidecar child process.

mod csai_layout;
mod load;
mod local_llm;
mod memory;
mod overload;
mod report;
mod watch;

use clap::{Parser, ValueEnum};
use csai_sidecar::chat::completion::Sampling;
use csai_sidecar::chat::provider::{Endpoint, ProviderSettings};
use csai_sidecar::config::{self, Config, Listen};
use csai_sidecar::domain::{Append, NewMessage, Role, SessionId, Window, WriteOptions};
use csai_sidecar::grpc::dial::DialOptions;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::chat_client::ChatClient;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use csai_sidecar::server;
use csai_sidecar::settings::Source;
use csai_sidecar::store::SessionStore;
use load::{Plan, Samples};
use report::Row;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
enum Op {
    /// AppendMessages of one message.
    Append,
    /// GetSession of the last `--window` messages.
    Get,
    /// GetSession of the messages that fit the tokens of `--window` messages (max_tokens).
    Tokens,
    /// ReplaceMessages with `--window` messages.
    Replace,
    /// A chat turn (Exec) over the last `--window` messages, against a local model that
    /// answers at once; its direct row is the same HTTP request sent by the bench.
    Chat,
}

#[derive(Parser, Debug)]
#[command(about = "Load csai-sidecar over gRPC and compare with the gRPC and backend floors")]
struct Args {
    /// A running sidecar (HOST:PORT or unix:///path); default: one started in this process.
    #[arg(long)]
    target: Option<String>,
    /// Backend of the in-process sidecar and of the direct floor.
    #[arg(long, default_value = "memory")]
    backend: String,
    #[arg(long, env = "CSAI_REDIS_ADDRESS", default_value = "127.0.0.1:6379")]
    redis_address: String,
    #[arg(
        long,
        env = "CSAI_MONGO_URI",
        default_value = "mongodb://127.0.0.1:27017"
    )]
    mongo_uri: String,
    #[arg(long, env = "CSAI_DYNAMO_ENDPOINT")]
    dynamo_endpoint: Option<String>,
    #[arg(
        long,
        env = "CSAI_POSTGRES_URL",
        default_value = "postgres://csai@127.0.0.1:5432/csai"
    )]
    postgres_url: String,
    /// The SQLite file of `--backend sqlite` (default: a new file in the temp folder).
    #[arg(long)]
    sqlite_path: Option<std::path::PathBuf>,
    /// Operations to measure, one row (and one floor row) each.
    #[arg(long, value_delimiter = ',', default_value = "append")]
    ops: Vec<Op>,
    /// Also one row of these operations interleaved by weight, e.g. append:7,get:2,replace:1.
    #[arg(long, value_delimiter = ',', value_parser = weighted_op)]
    mix: Vec<(Op, u32)>,
    /// Requests in flight at once (workers).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// gRPC connections the workers share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long each row runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop each row after this many requests instead.
    #[arg(long)]
    requests: Option<u64>,
    /// Fixed rate in requests per second (open loop); default: as fast as it goes.
    #[arg(long)]
    rate: Option<f64>,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Sessions the load is spread over.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Messages read by `get` and written by `replace`.
    #[arg(long, default_value_t = 20)]
    window: u32,
    /// Also measure each of --ops among append, get and tokens on sessions already this
    /// long (e.g. 10,1000,10000).
    #[arg(long, value_delimiter = ',')]
    lengths: Vec<usize>,
    /// With --lengths on Redis: also CS-AI's layout (the whole JSON array read and written
    /// back per append) at the same lengths.
    #[arg(long)]
    cs_ai_layout: bool,
    /// Instead of load: start a sidecar child process on the in-memory store, store this
    /// many messages of --payload bytes, and report start time and RSS.
    #[arg(long)]
    memory_messages: Option<u64>,
    /// Instead of load on one sidecar: offer --concurrency streams of ReplaceMessages to a
    /// sidecar child process whose max_concurrent_requests is this, then to one without a
    /// limit, and report throughput, shed requests and peak RSS of each.
    #[arg(long)]
    overload_limit: Option<usize>,
    /// Instead of load: this many WatchSession watchers on --sessions sessions while
    /// appends run at --rate (default 200/s) for --duration, through the same sidecar and,
    /// on a backend shared by replicas, through a second one; rows of delivery latency.
    #[arg(long)]
    watchers: Option<usize>,
    /// Instead of load (or after --watchers): open this many idle watchers on a sidecar
    /// child process and report its RSS per watcher.
    #[arg(long)]
    idle_watchers: Option<usize>,
    /// The csai-sidecar binary for --memory-messages and --overload-limit (default: next
    /// to csai-bench).
    #[arg(long)]
    sidecar_bin: Option<std::path::PathBuf>,
    /// Also serve the sidecar on a Unix domain socket and repeat the gRPC floor and each
    /// --ops row over it, beside the TCP rows.
    #[arg(long)]
    unix_socket: bool,
    /// Run the sidecar as a child process (the csai-sidecar binary, in-memory store), as in
    /// a Pod, instead of inside the bench; with --unix-socket, a second child listens on
    /// the socket.
    #[arg(long)]
    sidecar_process: bool,
    /// Skip the floor rows.
    #[arg(long)]
    no_floors: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn weighted_op(text: &str) -> Result<(Op, u32), String> {
    let (name, weight) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected OPERATION:WEIGHT, e.g. append:7"))?;
    let op = Op::from_str(name, true)
        .map_err(|_| format!("{name:?}: the operations are append, get, replace and chat"))?;
    let weight = weight
        .parse()
        .ok()
        .filter(|&w: &u32| w > 0)
        .ok_or_else(|| format!("{text:?}: the weight must be a whole number above 0"))?;
    Ok((op, weight))
}

/// The sizes of the requests that write `length` messages, at most `most` a request.
fn batches(length: usize, most: usize) -> impl Iterator<Item = usize> {
    (0..length)
        .step_by(most)
        .map(move |start| most.min(length - start))
}

/// Which operation each request runs: request i runs `schedule[i % len]`.
type Schedule = Arc<Vec<Op>>;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(error) = run(args).await {
        eprintln!("csai-bench: {error}");
        std::process::exit(1);
    }
}

fn config(args: &Args) -> Result<Config, String> {
    let mut values = config::defaults();
    let mut set = |name: &'static str, value: &str| {
        values.set(
            name,
            value.to_string(),
            Source::Flag(name.replace('_', "-")),
        );
    };
    set("type", &args.backend);
    set("listen", "127.0.0.1:0");
    set("redis_address", &args.redis_address);
    set("redis_key_prefix", "csai-bench:");
    set("mongo_uri", &args.mongo_uri);
    set(
        "dynamo_endpoint",
        args.dynamo_endpoint.as_deref().unwrap_or(""),
    );
    set("dynamo_create_table", "true");
    set("postgres_url", &args.postgres_url);
    set("postgres_table_prefix", "csai_bench_");
    let sqlite_path = args.sqlite_path.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("csai-bench-{}.sqlite3", std::process::id()))
    });
    set("sqlite_path", &sqlite_path.to_string_lossy());
    // The bench measures the sidecar, not its load shedding.
    set("max_concurrent_requests", "0");
    config::parse(&values).map_err(|e| e.to_string())
}

fn plan(args: &Args) -> Plan {
    Plan {
        concurrency: args.concurrency,
        duration: args.duration,
        requests: args.requests,
        rate: args.rate,
    }
}

struct Bench {
    args: Args,
    channels: Vec<Channel>,
    /// With --unix-socket: connections to the sidecar over its Unix socket (the same one,
    /// or a second child process).
    unix_channels: Option<Vec<Channel>>,
    /// The sidecars have stores of their own (--target, --sidecar-process): prefill
    /// through them.
    remote: bool,
    store: Arc<dyn SessionStore>,
    /// The local model's base URL, when a chat row runs.
    model_url: Option<String>,
    /// The TTL of the bench's own writes: the sidecar's default, which its gRPC writes
    /// get. (Another TTL would make the first gRPC write of a long session move the
    /// expiry of every stored chunk, a one-off cost that is not an append's.)
    ttl: Duration,
    run_id: String,
}

/// The in-process sidecar's chat provider: the bench's local model.
fn model_provider(base_url: &str) -> ProviderSettings {
    ProviderSettings {
        name: "default".into(),
        endpoint: Endpoint::OpenAi {
            base_url: base_url.to_string(),
            api_key: None,
        },
        model: "bench-model".into(),
        context_tokens: 0,
        defaults: Sampling::default(),
        timeout: Duration::from_secs(10),
        max_retries: 0,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let binary = args
        .sidecar_bin
        .clone()
        .unwrap_or_else(memory::default_binary);
    if let Some(limit) = args.overload_limit {
        let mut rows = Vec::new();
        for limit in [limit, 0] {
            let run = overload::run(
                &binary,
                limit,
                &plan(&args),
                args.payload,
                args.window,
                args.sessions,
                args.connections,
            )
            .await?;
            rows.push(run.row());
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        } else {
            print!("{}", report::table(&rows));
        }
        return Ok(());
    }
    if let Some(messages) = args.memory_messages {
        let report = memory::measure(&binary, messages, args.payload).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
        } else {
            print!("{}", memory::text(&report));
        }
        return Ok(());
    }
    if args.watchers.is_some() || args.idle_watchers.is_some() {
        return watch_runs(&args, &binary).await;
    }
    let mut config = config(&args)?;
    let model_url =
        if args.ops.contains(&Op::Chat) || args.mix.iter().any(|(op, _)| *op == Op::Chat) {
            if args.target.is_some() || args.sidecar_process {
                return Err("the chat row needs the in-process sidecar (no --target): \
                        the bench points its provider at the bench's own model"
                    .into());
            }
            let url = local_llm::start().await?;
            config.chat.providers = vec![model_provider(&url)];
            config.chat.default_provider = Some("default".into());
            Some(url)
        } else {
            None
        };
    let store = server::open_store(&config)
        .await
        .map_err(|e| e.to_string())?;
    // Child sidecars live as long as the run.
    let mut children = Vec::new();
    let mut child_on = async |listen: String| -> Result<String, String> {
        let child = memory::Sidecar::start_on(&binary, &listen, &[]).await?;
        let url = child.url.clone();
        children.push(child);
        Ok(url)
    };
    let target = match &args.target {
        Some(target) if target.starts_with("unix:") => target.clone(),
        Some(target) => format!("grpc://{target}"),
        None if args.sidecar_process => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            child_on(format!("127.0.0.1:{port}")).await?
        }
        None => serve_in_process(&config, &store).await?,
    };
    let channels = connect(&target, args.connections).await?;
    let unix_channels = match (args.unix_socket, &args.target) {
        (false, _) => None,
        (true, Some(_)) => {
            return Err(
                "--unix-socket adds a socket to the bench's own sidecar (no --target); \
                        to load a sidecar's socket, give --target unix:///path"
                    .into(),
            );
        }
        (true, None) => {
            let folder = std::env::temp_dir().join(format!("csai-bench-{}", std::process::id()));
            std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
            let path = folder.join("sidecar.sock");
            let url = if args.sidecar_process {
                child_on(format!("unix://{}", path.display())).await?
            } else {
                let config = Config {
                    listen: Listen::Unix { path, mode: 0o600 },
                    ..config.clone()
                };
                serve_in_process(&config, &store).await?
            };
            Some(connect(&url, args.connections).await?)
        }
    };
    let run_id = format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let bench = Bench {
        remote: args.target.is_some() || args.sidecar_process,
        args,
        channels,
        unix_channels,
        store,
        model_url,
        ttl: config.session_ttl,
        run_id,
    };
    let rows = bench.all_rows().await?;
    if bench.args.json {
        let output = serde_json::json!({
            "backend": bench.args.backend,
            "concurrency": bench.args.concurrency,
            "rate": bench.args.rate,
            "payload_bytes": bench.args.payload,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&output).expect("JSON"));
    } else {
        print!("{}", report::table(&rows));
    }
    Ok(())
}

/// The change-feed rows (--watchers) and the idle-watcher memory line (--idle-watchers).
async fn watch_runs(args: &Args, binary: &std::path::PathBuf) -> Result<(), String> {
    let mut rows = Vec::new();
    if let Some(watchers) = args.watchers {
        let config = config(args)?;
        let plan = watch::Plan {
            watchers,
            sessions: args.sessions,
            rate: args.rate.unwrap_or(200.0),
            duration: args.duration,
            payload: args.payload,
        };
        let run_id = format!("bench-{}", std::process::id());
        let store = server::open_store(&config)
            .await
            .map_err(|e| e.to_string())?;
        let url = serve_in_process(&config, &store).await?;
        let watching = watch::channels(&url, watchers).await?;
        let writer = DialOptions::default().connect(&url).await?;
        let name = format!("watch {} in one sidecar", args.backend);
        rows.push(
            watch::delivery(&name, &watching, writer, &plan, &format!("{run_id}-one")).await?,
        );
        // A second replica on the same backend: its own store, connections and hub.
        let shared = config.storage.backend.persistent && config.storage.backend.name != "sqlite";
        if shared {
            let other = server::open_store(&config)
                .await
                .map_err(|e| e.to_string())?;
            let other_url = serve_in_process(&config, &other).await?;
            let writer = DialOptions::default().connect(&other_url).await?;
            let name = format!("watch {} across replicas", args.backend);
            rows.push(
                watch::delivery(&name, &watching, writer, &plan, &format!("{run_id}-two")).await?,
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
    } else if !rows.is_empty() {
        print!("{}", report::table(&rows));
    }
    if let Some(count) = args.idle_watchers {
        print!("{}", watch::idle_memory(binary, count).await?);
    }
    Ok(())
}

/// Serves `store` in this process on `config.listen`; the URL to dial it.
async fn serve_in_process(
    config: &Config,
    store: &Arc<dyn SessionStore>,
) -> Result<String, String> {
    let listener = server::bind(config).await.map_err(|e| e.to_string())?;
    let url = match listener.tcp_address() {
        Some(address) => format!("grpc://{address}"),
        None => listener.address(),
    };
    let (serving_store, serving_config) = (store.clone(), config.clone());
    tokio::spawn(async move {
        server::serve(
            &serving_config,
            serving_store,
            listener,
            std::future::pending(),
        )
        .await
    });
    Ok(url)
}

/// `count` connections to the sidecar at `url` (grpc://host:port or unix:///path).
async fn connect(url: &str, count: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::new();
    for _ in 0..count.max(1) {
        channels.push(DialOptions::default().connect(url).await?);
    }
    Ok(channels)
}

/// A row over the Unix socket, its note comparing it with the same load over TCP.
fn versus_tcp(name: impl Into<String>, over_unix: &Samples, over_tcp: &Samples) -> Row {
    let mut row = Row::new(name, over_unix);
    let (unix_p50, tcp_p50) = (over_unix.quantile_ms(0.5), over_tcp.quantile_ms(0.5));
    row.note = format!(
        "p50 {:+.3} ms ({:+.0}%) vs TCP, p99 {:.2}x TCP's",
        unix_p50 - tcp_p50,
        (unix_p50 / tcp_p50 - 1.0) * 100.0,
        over_unix.quantile_ms(0.99) / over_tcp.quantile_ms(0.99)
    );
    row
}

impl Bench {
    fn plan(&self) -> Plan {
        plan(&self.args)
    }

    fn content(&self) -> String {
        "x".repeat(self.args.payload)
    }

    fn session(&self, tag: &str, i: u64) -> String {
        format!(
            "{}-{tag}-{}",
            self.run_id,
            i % self.args.sessions.max(1) as u64
        )
    }

    async fn all_rows(&self) -> Result<Vec<Row>, String> {
        let mut rows = Vec::new();
        let floor = if self.args.no_floors {
            None
        } else {
            let samples = match &self.unix_channels {
                Some(unix) => {
                    let (samples, over_unix) = self
                        .tcp_and_unix(unix, |channels, plan| self.grpc_floor(channels, plan))
                        .await;
                    rows.push(Row::new("grpc floor: health Check", &samples));
                    let name = "grpc floor over unix socket";
                    rows.push(versus_tcp(name, &over_unix, &samples));
                    samples
                }
                None => {
                    let samples = self.grpc_floor(&self.channels, self.plan()).await;
                    rows.push(Row::new("grpc floor: health Check", &samples));
                    samples
                }
            };
            Some(samples)
        };
        let mut workloads: Vec<(String, Vec<Op>)> = self
            .args
            .ops
            .iter()
            .map(|op| (format!("{op:?}").to_lowercase(), vec![*op]))
            .collect();
        if !self.args.mix.is_empty() {
            let schedule = self
                .args
                .mix
                .iter()
                .flat_map(|&(op, weight)| std::iter::repeat_n(op, weight as usize))
                .collect();
            workloads.push(("mix".to_string(), schedule));
        }
        for (tag, schedule) in workloads {
            let schedule: Schedule = Arc::new(schedule);
            self.prefill(&tag, self.args.window as usize).await?;
            let over = |channels, plan| self.over_grpc(schedule.clone(), &tag, channels, plan);
            let (through_sidecar, over_unix) = match &self.unix_channels {
                Some(unix) => {
                    let (tcp, over_unix) = self.tcp_and_unix(unix, over).await;
                    (tcp, Some(over_unix))
                }
                None => (over(&self.channels, self.plan()).await, None),
            };
            let mut row = Row::new(format!("{tag} via sidecar"), &through_sidecar);
            if let Some(floor) = &floor {
                row.note = format!(
                    "{:.2}x the gRPC floor's ops/s, p99 {:.2}x its p99",
                    through_sidecar.throughput() / floor.throughput(),
                    through_sidecar.quantile_ms(0.99) / floor.quantile_ms(0.99)
                );
            }
            rows.push(row);
            if let Some(over_unix) = over_unix {
                let name = format!("{tag} via sidecar over unix socket");
                rows.push(versus_tcp(name, &over_unix, &through_sidecar));
            }
            if let Some(floor) = &floor {
                let direct = self.direct(schedule.clone(), &tag).await;
                let floor_name = match schedule.as_slice() {
                    [Op::Chat] => "model",
                    ops if ops.contains(&Op::Chat) => "store and model",
                    _ => self.store.backend(),
                };
                let mut row = Row::new(format!("{tag} direct to {floor_name}"), &direct);
                let added_p50 = through_sidecar.quantile_ms(0.5) - direct.quantile_ms(0.5);
                // What is left of the added p50 once the gRPC round trip itself is paid.
                let own_p50 = added_p50 - floor.quantile_ms(0.5);
                row.note = format!(
                    "sidecar adds p50 {added_p50:+.3} ms (gRPC floor + {own_p50:.3}), p99 {:+.3} ms",
                    through_sidecar.quantile_ms(0.99) - direct.quantile_ms(0.99)
                );
                rows.push(row);
            }
        }
        let mut shortest: HashMap<Op, Samples> = HashMap::new();
        let length_ops: Vec<Op> = self
            .args
            .ops
            .iter()
            .copied()
            .filter(|op| matches!(op, Op::Append | Op::Get | Op::Tokens))
            .collect();
        for (index, &length) in self.args.lengths.iter().enumerate() {
            // A length may come twice (to see whether the backend itself slowed down).
            let tag = format!("len{length}-{index}");
            self.prefill(&tag, length).await?;
            for &op in &length_ops {
                let samples = self
                    .over_grpc(Arc::new(vec![op]), &tag, &self.channels, self.plan())
                    .await;
                let name = format!("{op:?}").to_lowercase();
                let mut row = Row::new(format!("{name} at {length} messages"), &samples);
                if let Some(first) = shortest.get(&op) {
                    row.note = format!(
                        "p50 {:.2}x, p99 {:.2}x that at {} messages",
                        samples.quantile_ms(0.5) / first.quantile_ms(0.5),
                        samples.quantile_ms(0.99) / first.quantile_ms(0.99),
                        self.args.lengths[0]
                    );
                } else {
                    shortest.insert(op, samples.clone());
                }
                rows.push(row);
                if op != Op::Append {
                    continue;
                }
                if self.args.cs_ai_layout {
                    let cs_ai = csai_layout::append_rows(
                        &self.args.redis_address,
                        &self.run_id,
                        self.args.sessions,
                        length,
                        self.args.payload,
                        &self.plan(),
                    )
                    .await?;
                    let mut row = Row::new(format!("cs-ai layout at {length} messages"), &cs_ai);
                    row.note = format!(
                        "p50 {:.2}x, p99 {:.2}x the sidecar's append",
                        cs_ai.quantile_ms(0.5) / samples.quantile_ms(0.5),
                        cs_ai.quantile_ms(0.99) / samples.quantile_ms(0.99)
                    );
                    rows.push(row);
                }
            }
        }
        Ok(rows)
    }

    /// Measures the same load over TCP and over the Unix socket in alternating slices
    /// (five each, the row's duration or requests split between them), so that a drift of
    /// the shared machine falls on both alike.
    async fn tcp_and_unix<'a, F, Fut>(
        &'a self,
        unix: &'a [Channel],
        measure: F,
    ) -> (Samples, Samples)
    where
        F: Fn(&'a [Channel], Plan) -> Fut,
        Fut: std::future::Future<Output = Samples>,
    {
        const SLICES: u32 = 5;
        let mut slice = self.plan();
        slice.duration /= SLICES;
        slice.requests = slice.requests.map(|n| n.div_ceil(u64::from(SLICES)));
        let (mut tcp, mut over_unix) = (Samples::default(), Samples::default());
        for _ in 0..SLICES {
            tcp.absorb(measure(&self.channels, slice.clone()).await);
            over_unix.absorb(measure(unix, slice.clone()).await);
        }
        (tcp, over_unix)
    }

    async fn grpc_floor(&self, channels: &[Channel], plan: Plan) -> Samples {
        let channels = channels.to_vec();
        load::run("grpc floor", &plan, move |i| {
            let mut client = HealthClient::new(channels[i as usize % channels.len()].clone());
            async move {
                client
                    .check(HealthCheckRequest::default())
                    .await
                    .map(drop)
                    .map_err(|s| format!("{:?}", s.code()))
            }
        })
        .await
    }

    /// Gives every session of `tag` `length` messages: directly in the bench's store (the
    /// in-process sidecar's, and the direct floor's), and for a `--target` also over its
    /// AppendMessages (its key prefix, backend and limits are its own).
    async fn prefill(&self, tag: &str, length: usize) -> Result<(), String> {
        if self.remote {
            for channels in std::iter::once(&self.channels).chain(&self.unix_channels) {
                self.prefill_over_grpc(&channels[0], tag, length).await?;
            }
        }
        let content = self.content();
        for s in 0..self.args.sessions as u64 {
            let id = SessionId::new(self.session(tag, s));
            for batch in batches(length, 1000) {
                let messages = (0..batch)
                    .map(|_| NewMessage::text(Role::User, content.clone()))
                    .collect();
                self.store
                    .append(
                        &id,
                        Append {
                            messages,
                            request_id: None,
                            options: WriteOptions::ttl(self.ttl),
                        },
                    )
                    .await
                    .map_err(|e| format!("prefill {id}: {e}"))?;
            }
        }
        Ok(())
    }

    async fn prefill_over_grpc(
        &self,
        channel: &Channel,
        tag: &str,
        length: usize,
    ) -> Result<(), String> {
        let content = self.content();
        // Within the default limits: 1,000 messages and 4 MiB a request.
        let per_request = ((3 << 20) / (content.len() + 64)).clamp(1, 1000);
        let mut client = SessionStoreClient::new(channel.clone());
        for s in 0..self.args.sessions as u64 {
            let id = self.session(tag, s);
            for batch in batches(length, per_request) {
                client
                    .append_messages(pb::AppendMessagesRequest {
                        session_id: id.clone(),
                        messages: (0..batch)
                            .map(|_| pb::Message {
                                role: pb::Role::User as i32,
                                content: content.clone(),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("prefill {id} on the target: {}", e.message()))?;
            }
        }
        Ok(())
    }

    async fn over_grpc(
        &self,
        schedule: Schedule,
        tag: &str,
        channels: &[Channel],
        plan: Plan,
    ) -> Samples {
        let (content, window) = (self.content(), self.args.window);
        // The tokens of `window` of the bench's messages: a budgeted read returns as many
        // messages as `get` does.
        let budget = window
            * csai_sidecar::tokens::Encoding::O200k
                .message(&NewMessage::text(Role::User, content.clone()));
        let sessions: Vec<String> = (0..self.args.sessions as u64)
            .map(|s| self.session(tag, s))
            .collect();
        let channels = channels.to_vec();
        let label = format!("{tag} via sidecar");
        load::run(&label, &plan, move |i| {
            let op = schedule[i as usize % schedule.len()];
            let channel = channels[i as usize % channels.len()].clone();
            let mut client = SessionStoreClient::new(channel.clone());
            let session_id = sessions[i as usize % sessions.len()].clone();
            let message = pb::Message {
                role: pb::Role::User as i32,
                content: content.clone(),
                ..Default::default()
            };
            async move {
                let result = match op {
                    Op::Append => client
                        .append_messages(pb::AppendMessagesRequest {
                            session_id,
                            messages: vec![message],
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    Op::Get => client
                        .get_session(pb::GetSessionRequest {
                            session_id,
                            window: Some(pb::get_session_request::Window::LastN(window)),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    Op::Tokens => client
                        .get_session(pb::GetSessionRequest {
                            session_id,
                            window: Some(pb::get_session_request::Window::MaxTokens(budget)),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    Op::Replace => client
                        .replace_messages(pb::ReplaceMessagesRequest {
                            session_id,
                            messages: vec![message; window as usize],
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    Op::Chat => ChatClient::new(channel)
                        .exec(pb::ExecRequest {
                            session_id,
                            user_message: Some(pb::UserMessage {
                                content: message.content,
                                participant_name: String::new(),
                            }),
                            history_window: window,
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                };
                result.map_err(|s| format!("{:?}", s.code()))
            }
        })
        .await
    }

    /// The same requests as [`Self::over_grpc`], to the store (the sidecar's own store
    /// object) and, for chat, to the model, from the bench itself.
    async fn direct(&self, schedule: Schedule, tag: &str) -> Samples {
        let (content, window, ttl) = (self.content(), self.args.window, self.ttl);
        let sessions: Vec<SessionId> = (0..self.args.sessions as u64)
            .map(|s| SessionId::new(self.session(tag, s)))
            .collect();
        let store = self.store.clone();
        let model = self
            .model_url
            .as_ref()
            .map(|url| DirectModel::new(url, self));
        let label = format!("{tag} direct");
        load::run(&label, &self.plan(), move |i| {
            let op = schedule[i as usize % schedule.len()];
            let store = store.clone();
            let model = model.clone();
            let id = sessions[i as usize % sessions.len()].clone();
            let message = NewMessage::text(Role::User, content.clone());
            async move {
                let result = match op {
                    Op::Append => store
                        .append(
                            &id,
                            Append {
                                messages: vec![message],
                                request_id: None,
                                options: WriteOptions::ttl(ttl),
                            },
                        )
                        .await
                        .map(drop),
                    // A budgeted read's direct floor: the same window read from the backend.
                    Op::Get | Op::Tokens => store.get(&id, Window::LastN(window)).await.map(drop),
                    Op::Replace => store
                        .replace(&id, vec![message; window as usize], WriteOptions::ttl(ttl))
                        .await
                        .map(drop),
                    Op::Chat => {
                        return model.expect("the model runs for chat").complete().await;
                    }
                };
                result.map_err(|e| e.to_string())
            }
        })
        .await
    }
}

/// The request a chat turn makes, sent by the bench itself: the history window and the
/// user's message, one POST, the answer parsed.
#[derive(Clone)]
struct DirectModel {
    client: reqwest::Client,
    url: Arc<str>,
    body: Arc<serde_json::Value>,
}

impl DirectModel {
    fn new(base_url: &str, bench: &Bench) -> Self {
        let message = serde_json::json!({"role": "user", "content": bench.content()});
        Self {
            client: reqwest::Client::new(),
            url: format!("{base_url}/chat/completions").into(),
            body: Arc::new(serde_json::json!({
                "model": "bench-model",
                "messages": vec![message; bench.args.window as usize + 1],
            })),
        }
    }

    async fn complete(self) -> Result<(), String> {
        let answer: serde_json::Value = self
            .client
            .post(&*self.url)
            .json(&*self.body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match answer["choices"][0]["message"]["content"].as_str() {
            Some(local_llm::ANSWER) => Ok(()),
            _ => Err("unexpected answer".to_string()),
        }
    }
}
