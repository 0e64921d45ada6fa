"""The bus: a real nats-server, typed messages over it, and the team's JetStream state.

Everything that crosses between agents goes through here; nothing else in lmteams imports
nats-py.
"""

from lmteams.bus._backoff import Backoff, BackoffCounter, retrying
from lmteams.bus._cluster import LocalCluster, leaf_node_config, run_cluster
from lmteams.bus._codec import Codec, ErrorReply, encode, encode_json, type_tag
from lmteams.bus._connection import (
    ENV_URL,
    Bus,
    BusState,
    BusStatistics,
    Handler,
    Incoming,
    RawMsg,
    Subscription,
    is_json,
    open_bus,
)
from lmteams.bus._envelope import JSON, MSGPACK, SCHEMA_VERSION, Envelope, LamportClock, new_id
from lmteams.bus._jetstream import (
    KV,
    KVEntry,
    PubAck,
    StreamSettings,
    ensure_stream,
    ensure_team_streams,
    open_kv,
    publish_durable,
)
from lmteams.bus._provision import provision_team, provision_team_at
from lmteams.bus._security import (
    ENV_NKEY_SEED,
    ENV_PASSWORD,
    ENV_USER,
    SECURITY_FILE,
    BusAuth,
    Credential,
    Role,
    TeamSecurity,
    admin_permissions,
    agent_permissions,
    client_permissions,
    identity_of,
    load_security,
    new_nkey,
    team_security,
    write_credentials,
)
from lmteams.bus._server import (
    ClusterConfig,
    EmbeddedServer,
    ServerConfig,
    find_server_binary,
    free_port,
    run_server,
)
from lmteams.bus._subjects import (
    JOB_REPORTS_CONSUMER,
    JOB_REQUESTS_CONSUMER,
    JOBS_BUCKET,
    KEYS_BUCKET,
    PROTOCOL_AGENT,
    TASKS_CONSUMER,
    TEAM_BUCKETS,
    ParsedSubject,
    ProtocolVerb,
    SubjectKind,
    Subjects,
    inbox_prefix,
    is_reply_address,
    validate_token,
)
from lmteams.bus._workqueue import (
    Delivery,
    WorkQueue,
    WorkQueueSettings,
    last_message,
    open_consumer,
    open_work_queue,
)

__all__ = (
    # server
    "ServerConfig",
    "ClusterConfig",
    "EmbeddedServer",
    "run_server",
    "LocalCluster",
    "run_cluster",
    "leaf_node_config",
    "find_server_binary",
    "free_port",
    # connection
    "open_bus",
    "Bus",
    "BusState",
    "BusStatistics",
    "Incoming",
    "Handler",
    "Subscription",
    "RawMsg",
    "is_json",
    "ENV_URL",
    # envelope and codec
    "Envelope",
    "LamportClock",
    "new_id",
    "Codec",
    "ErrorReply",
    "encode",
    "encode_json",
    "type_tag",
    "SCHEMA_VERSION",
    "MSGPACK",
    "JSON",
    # subjects
    "Subjects",
    "SubjectKind",
    "ParsedSubject",
    "validate_token",
    "inbox_prefix",
    "is_reply_address",
    "KEYS_BUCKET",
    "JOBS_BUCKET",
    "JOB_REQUESTS_CONSUMER",
    "JOB_REPORTS_CONSUMER",
    "TEAM_BUCKETS",
    "TASKS_CONSUMER",
    "ProtocolVerb",
    "PROTOCOL_AGENT",
    # jetstream
    "StreamSettings",
    "ensure_team_streams",
    "ensure_stream",
    "publish_durable",
    "PubAck",
    "KV",
    "KVEntry",
    "open_kv",
    "provision_team",
    "provision_team_at",
    # security
    "BusAuth",
    "TeamSecurity",
    "Credential",
    "Role",
    "team_security",
    "agent_permissions",
    "client_permissions",
    "admin_permissions",
    "write_credentials",
    "load_security",
    "new_nkey",
    "identity_of",
    "SECURITY_FILE",
    "ENV_NKEY_SEED",
    "ENV_USER",
    "ENV_PASSWORD",
    # work queue
    "WorkQueue",
    "WorkQueueSettings",
    "Delivery",
    "open_work_queue",
    "last_message",
    "open_consumer",
    # retries
    "Backoff",
    "BackoffCounter",
    "retrying",
)
