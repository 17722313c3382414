"""L1: settings, loaded from one TOML file (conf/pacsd.example.toml lists every key).

Every setting has a default here and in ``conf/pacsd.example.toml`` (a test keeps the
two in step, and ``docs/settings.md`` describes each). Secrets may be given indirectly as
``"$env:NAME"`` or ``"$file:/path"`` so they stay out of the file (ARCHITECTURE
conventions). CLI flags override the common ones.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PacsdError


class ConfigError(PacsdError):
    """The configuration is invalid."""


@dataclass
class ServerSettings:
    #: HTTP listen address HOST:PORT. Loopback by default (security is default: SEC-20).
    http: str = "127.0.0.1:8042"
    #: DICOM (DIMSE) port; 0 disables the DIMSE listener.
    dicom_port: int = 11112
    #: This archive's AE title.
    ae_title: str = "PACSD"
    #: Directory for the embedded index, the local blob store and staging files.
    data_dir: str = "./pacsd-data"
    #: Public base URL (e.g. https://pacs.example.org); empty = derived from each request.
    public_url: str = ""
    #: Seconds graceful shutdown waits for in-flight requests (stores finish first).
    shutdown_timeout_s: float = 30.0
    #: Worker threads for blocking work (file IO, parsing, index), per worker process.
    worker_threads: int = 16
    #: HTTP worker processes (R-H1; pacsd/server.py, docs/operations.md "Worker
    #: processes"): 1 = one process does everything; N > 1 = N processes accept HTTP on
    #: the same port and the first also runs DIMSE and the background work; 0 (the
    #: default) = one per CPU this process may use (affinity and cgroup CPU quota).
    workers: int = 0
    #: A study is "stable" after this many seconds without a new instance: the
    #: study_stable plugin hook fires (e-film by rule); 0 disables it.
    stable_age_s: float = 60.0
    #: Directory of the built web viewer served at /viewer; empty = viewer-web/dist of
    #: the source checkout (R-D1, docs/viewer.md).
    viewer_dir: str = ""
    #: TLS certificate chain and private key (PEM files). When set, HTTP is served as
    #: HTTPS and ``dicom_tls_port`` may be used (pacsd/tls.py, MLPS 3).
    tls_cert: str = ""
    tls_key: str = ""
    #: DICOM over TLS listener port (2762 is the registered one); 0 = off.
    dicom_tls_port: int = 0
    #: CA certificates (PEM); when set, the DICOM TLS listener requires client
    #: certificates issued by them (mutual TLS).
    tls_client_ca: str = ""


@dataclass
class StorageSettings:
    #: Blob store URL: a path / file:// URL (default <data_dir>/blobs) or s3://bucket/prefix.
    url: str = ""
    #: Options for S3-compatible stores.
    endpoint_url: str = ""
    key: str = ""
    secret: str = ""
    region: str = ""
    #: Several copies that verify each other (R-A6): a list of tables, each with ``url``
    #: and optionally ``endpoint_url``, ``key``, ``secret``, ``region``. When non-empty it
    #: replaces ``url``; a store is acknowledged only once every copy holds it, hash-checked.
    copies: list[dict[str, Any]] = field(default_factory=list)
    #: Lossless compression at ingest (R-A5): "none", "jpeg-ls-lossless" or
    #: "jpeg2000-lossless". Applied to uncompressed images only when it saves space,
    #: and only after the result decodes to identical pixels.
    compress: str = "none"
    #: Days between scheduled scrubs of every copy by the serve process(es) (R-A6,
    #: reliability-matrix §3 target 3): bad copies are repaired from a valid one, the
    #: result audited. 0 = off (run ``pacsd verify`` from cron instead).
    scrub_every_days: float = 0.0

    #: Keys of one ``copies`` entry.
    COPY_KEYS = ("url", "endpoint_url", "key", "secret", "region")

    def copy_specs(self, default_url: str) -> list[dict[str, str]]:
        """The copies to open: ``copies`` if given, else one copy at ``url`` (or
        ``default_url``). An ``s3://`` copy without its own ``endpoint_url``/``key``/
        ``secret``/``region`` takes the top-level value; ``$env:``/``$file:`` resolved."""
        entries = self.copies or [{"url": self.url or default_url}]
        specs = []
        for n, entry in enumerate(entries, 1):
            if not isinstance(entry, dict):
                raise ConfigError(f"[storage] copies: entry {n} must be a table")
            unknown = set(entry) - set(self.COPY_KEYS)
            if unknown:
                raise ConfigError(f"unknown setting [storage] copies entry {n}: "
                                  + ", ".join(sorted(unknown)))
            spec = {k: _resolve_secret(v) for k, v in entry.items()}
            if any(not isinstance(v, str) for v in spec.values()):
                raise ConfigError(f"[storage] copies entry {n}: values must be strings")
            if not spec.get("url"):
                raise ConfigError(f"[storage] copies entry {n} needs a url")
            if spec["url"].split("://", 1)[0].lower() in ("s3", "s3a"):
                for k in self.COPY_KEYS[1:]:
                    if not spec.get(k) and getattr(self, k):
                        spec[k] = getattr(self, k)
            specs.append({k: v for k, v in spec.items() if v})
        return specs


@dataclass
class IndexSettings:
    #: SQLAlchemy URL: default sqlite:///<data_dir>/index.db; postgresql://user@host/db for scale-out.
    url: str = ""
    #: Seconds a write waits for a locked database before answering 503 / A700 (FT-10).
    busy_timeout_s: float = 10.0


@dataclass
class DicomwebSettings:
    #: URL path root of the DICOMweb services.
    root: str = "/dicom-web"
    #: Largest STOW-RS request body in bytes (413 above; checked while streaming).
    max_request_bytes: int = 8 * 1024**3
    #: Largest single instance in bytes.
    max_instance_bytes: int = 4 * 1024**3
    #: Most parts in one STOW-RS request.
    max_parts: int = 10000
    #: Instances processed concurrently within one STOW-RS request.
    stow_concurrency: int = 4
    #: QIDO-RS: the most results one response returns (larger limits are clamped).
    qido_max_limit: int = 1000
    #: Transfer syntax of WADO-RS application/dicom when the client names none:
    #: PS3.18 says Explicit VR Little Endian; "*" returns objects as stored.
    default_transfer_syntax: str = "1.2.840.10008.1.2.1"
    #: Origins allowed to call from a browser (CORS). Empty: no cross-origin access.
    cors_allowed_origins: list[str] = field(default_factory=list)
    #: Largest image (rows x columns x samples x frames) /rendered, /thumbnail and
    #: frame decoding will touch (BI-11, BI-13).
    render_max_pixels: int = 2**28
    #: Most frames one /frames request may list (BI-31).
    max_frames_per_request: int = 1000


@dataclass
class DimseSettings:
    """DIMSE (DICOM network) services; the listener itself is ``[server] dicom_port`` and
    ``ae_title`` (0 port = no DIMSE). See docs/dimse-conformance.md."""

    #: Known remote AEs, AE title -> "host:port": the C-MOVE destinations (SEC-18: any
    #: other Move Destination answers 0xA801).
    peers: dict[str, str] = field(default_factory=dict)
    #: Calling AE titles allowed to associate; empty = any (the embedded loopback
    #: default). Others get A-ASSOCIATE-RJ permanent, source 1, reason 3 (SEC-18).
    allowed_calling_aets: list[str] = field(default_factory=list)
    #: Source IP addresses or networks (CIDR) allowed to connect; empty = any.
    allowed_source_ips: list[str] = field(default_factory=list)
    #: Simultaneous incoming associations; one more is rejected transient,
    #: local-limit-exceeded (LD-4).
    max_associations: int = 16
    #: Seconds to wait for association negotiation (A-ASSOCIATE, A-RELEASE) messages.
    acse_timeout_s: float = 30.0
    #: Seconds to wait for a DIMSE message (e.g. a C-STORE response during C-MOVE).
    dimse_timeout_s: float = 30.0
    #: Seconds an association may stay silent, and the most one PDU may take to arrive
    #: (BI-34: slow or stalled peers are aborted).
    network_timeout_s: float = 60.0
    #: Largest PDU pacsd receives, in bytes (0 = unlimited). 1 MiB: a sender puts a
    #: whole CT slice in one PDU instead of ~32 of pynetdicom's default 16 kB, each of
    #: which costs a reactor loop, a decode and a copy (issue 6, R-H1).
    max_pdu: int = 1048576
    #: DIMSE identities (SEC-18, R-E3): calling AE title -> table with ``source_ips``
    #: (addresses / CIDR the AE must connect from; empty = any), ``roles``,
    #: ``institutions`` and ``clearances``. With [security] enabled an AE/address pair
    #: listed nowhere (and named by no ``actor_from_association`` plugin) is refused with
    #: 0x0124 on C-STORE / C-FIND / C-GET / C-MOVE.
    actors: dict[str, dict[str, Any]] = field(default_factory=dict)

    ACTOR_KEYS = ("source_ips", "roles", "institutions", "clearances")

    def peer_addresses(self) -> dict[str, tuple[str, int]]:
        """``peers`` parsed: AE title -> (host, port); ConfigError names a bad entry."""
        out = {}
        for aet, address in self.peers.items():
            aet_ok = isinstance(aet, str) and 0 < len(aet.strip()) <= 16 and aet.isascii() \
                and "\\" not in aet
            host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
            if not aet_ok or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"[dimse] peers: entry {aet!r} must be AE = \"host:port\" "
                                  "(AE title up to 16 ASCII characters)")
            out[aet.strip()] = (host.strip("[]"), int(port))
        return out

    def add_peer(self, spec: str) -> None:
        """``AET=host:port`` (the ``--peer`` command-line flag)."""
        aet, sep, address = spec.partition("=")
        if not sep:
            raise ConfigError("--peer must be AET=host:port")
        self.peers[aet.strip()] = address.strip()
        self.peer_addresses()

    def source_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``allowed_source_ips`` parsed (addresses or CIDR networks)."""
        try:
            return [ipaddress.ip_network(str(n).strip(), strict=False)
                    for n in self.allowed_source_ips]
        except ValueError:
            raise ConfigError("[dimse] allowed_source_ips: each entry must be an IP "
                              "address or network (CIDR)") from None

    def actor_table(self) -> dict[str, dict[str, Any]]:
        """``actors`` checked: AE title -> {source_ips: [networks], roles, institutions
        (None = [security] default_institutions), clearances}."""
        out: dict[str, dict[str, Any]] = {}
        for aet, entry in self.actors.items():
            if not isinstance(entry, dict) or set(entry) - set(self.ACTOR_KEYS) or \
                    not 0 < len(aet.strip()) <= 16 or any(
                        not isinstance(v, list) or not all(isinstance(x, str) for x in v)
                        for v in entry.values()):
                raise ConfigError(f"[dimse] actors: entry {aet!r} must be a table of lists "
                                  "of strings: " + ", ".join(self.ACTOR_KEYS))
            try:
                nets = [ipaddress.ip_network(n.strip(), strict=False)
                        for n in entry.get("source_ips", [])]
            except ValueError:
                raise ConfigError(f"[dimse] actors: {aet!r} source_ips must be IP "
                                  "addresses or networks") from None
            out[aet.strip()] = {
                "source_ips": nets, "roles": list(entry.get("roles", [])),
                "institutions": entry.get("institutions"),
                "clearances": list(entry.get("clearances", []))}
        return out

    def check(self) -> None:
        self.peer_addresses()
        self.source_networks()
        self.actor_table()
        if self.max_associations < 1:
            raise ConfigError("[dimse] max_associations must be at least 1")
        if self.max_pdu < 0 or self.max_pdu > 0xFFFFFFFF:
            raise ConfigError("[dimse] max_pdu must be 0 (unlimited) or a PDU size in bytes")
        for name in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[dimse] {name} must be positive")


@dataclass
class OidcSettings:
    """OIDC login to a hospital identity provider (R-E1; docs/security.md "OIDC login").
    Off while ``issuer`` is empty."""

    #: The provider's issuer URL (discovery: ISSUER/.well-known/openid-configuration).
    issuer: str = ""
    #: This pacsd's client registration at the provider (confidential client).
    client_id: str = ""
    client_secret: str = ""
    #: A file whose first line is the client secret (instead of ``client_secret``).
    client_secret_file: str = ""
    #: Where the provider sends the browser back: https://PACS/api/v1/auth/oidc/callback.
    redirect_uri: str = ""
    #: Scopes asked for ("openid" is always sent).
    scopes: list[str] = field(default_factory=lambda: ["openid", "profile"])
    #: Claim (string or list) whose values ``role_map`` maps to pacsd roles.
    role_claim: str = "roles"
    #: Claim value -> pacsd role, e.g. {"pacs-radiology" = "radiologist"}. Unmapped
    #: values give nothing; a login that maps to no role is refused.
    role_map: dict[str, str] = field(default_factory=dict)
    #: Claim (string or list) with the user's institution codes (R-A12); "" = keep the
    #: institutions set in pacsd.
    institution_claim: str = ""
    #: Claim that names a new pacsd user (the subject is what links it).
    username_claim: str = "preferred_username"
    #: Link the first login to an existing pacsd user of the same name (otherwise such
    #: a login is refused: a name chosen at the provider must not take over an account).
    link_existing_users: bool = False
    #: ``amr`` values, and ``acr`` values, that count as multi-factor authentication at
    #: the provider; otherwise a user who needs TOTP also gives pacsd's one-time code.
    mfa_amr_values: list[str] = field(default_factory=lambda: ["mfa", "otp", "hwk", "sc"])
    mfa_acr_values: list[str] = field(default_factory=list)
    #: Page the browser is sent to after login (the token is handed over in the URL
    #: fragment, never in a query string).
    post_login_redirect: str = "/viewer/"
    #: Where the provider sends the browser after a logout that also ends the provider's
    #: session (RP-initiated logout; must be registered at the provider as a
    #: post_logout_redirect_uri, absolute URL). "" = the provider's own page.
    post_logout_redirect: str = ""
    #: Seconds a started login may take, and of clock difference allowed for exp / iat.
    login_timeout_s: float = 600.0
    clock_skew_s: float = 60.0
    #: Seconds discovery and the provider's keys (JWKS) are cached; an unknown key id
    #: fetches the keys again at once (key rotation), at most once a second.
    jwks_cache_s: float = 3600.0

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)

    def secret(self) -> str:
        if self.client_secret_file:
            return Path(self.client_secret_file).read_text().splitlines()[0].strip()
        return self.client_secret

    def check(self) -> None:
        if not self.enabled:
            return
        if not (self.client_id and self.redirect_uri and (self.client_secret or
                                                          self.client_secret_file)):
            raise ConfigError("[security.oidc] needs client_id, client_secret (or "
                              "client_secret_file) and redirect_uri with issuer")
        if not self.issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigError("[security.oidc] issuer must be an https URL")
        if not self.role_map:
            raise ConfigError("[security.oidc] role_map maps provider values to roles")


@dataclass
class SecuritySettings:
    """Authentication, authorization and audit (docs/security.md; R-E1, MLPS 1-2)."""

    #: Require a Bearer token (session or API token) on every route but health and
    #: login. Off = the embedded loopback-only mode: requests act as the local operator.
    enabled: bool = False
    #: Consecutive failed passwords that lock an account (MLPS 2).
    lockout_threshold: int = 5
    #: Seconds an account stays locked.
    lockout_s: float = 900.0
    #: Seconds of inactivity that end a session (MLPS 2).
    session_idle_timeout_s: float = 900.0
    #: Seconds after login a session ends however active it is.
    session_absolute_timeout_s: float = 28800.0
    #: Failed logins / bad tokens from one source IP within ``login_rate_window_s``
    #: after which it gets 429 (SEC-8).
    login_rate_limit: int = 10
    login_rate_window_s: float = 300.0
    #: Shortest password accepted (with 3 of 4 character classes, not the user name).
    password_min_length: int = 8
    #: Longest lifetime of an API token, in days.
    token_max_days: int = 365
    #: Data scoping (R-A12, docs/security.md "Data scoping"). Institutions a user who was
    #: given none sees: ["*"] = every institution (a single-hospital archive); [] = none
    #: (a multi-hospital archive: deny until the security administrator assigns some).
    default_institutions: list[str] = field(default_factory=lambda: ["*"])
    #: DICOM keyword whose value, captured when a study is first stored, is the study's
    #: institution (hospital / campus code).
    institution_attribute: str = "InstitutionName"
    #: Maps captured values to institution codes, e.g. {"Peking Union East" = "PUMCH-E"};
    #: unmapped values are used as they are.
    institution_map: dict[str, str] = field(default_factory=dict)
    #: Institution code of a study stored without the attribute.
    institution_default: str = ""
    #: Roles that also see a patient's studies at other institutions, when the patient
    #: (same PatientID + IssuerOfPatientID) has a study at one of theirs (cross-hospital
    #: history). Empty = strict separation.
    cross_institution_roles: list[str] = field(default_factory=list)
    #: Roles that must log in with a TOTP one-time code as well as the password (MLPS 4;
    #: enrol with `pacsd user totp NAME`). Users of other roles need one once enrolled.
    totp_required_roles: list[str] = field(
        default_factory=lambda: ["sysadmin", "secadmin", "auditor"])
    #: Issuer name an authenticator app shows next to the account.
    totp_issuer: str = "pacsd"
    #: A new password may not equal the current one nor the previous N-1 (MLPS 1).
    password_history: int = 5
    #: Days after which a password must be changed at the next login (0 = never).
    password_max_age_days: float = 90.0
    #: Days without a password login after which an account is disabled at its next
    #: login attempt (MLPS 5; 0 = never). The security administrator enables it again.
    inactive_disable_days: float = 90.0
    #: Reverse proxies (addresses / CIDR) whose X-Forwarded-For names the client: audit
    #: source_ip and the login rate limit use that address. Empty = the TCP peer.
    trusted_proxies: list[str] = field(default_factory=list)
    #: Seconds a verified session / API token is trusted without asking the database
    #: again. Changes through the same process apply at once; other processes see a
    #: revocation within this time (SEC-6). 0 = ask the database on every request.
    auth_cache_ttl_s: float = 5.0
    #: OIDC login (``[security.oidc]``).
    oidc: OidcSettings = field(default_factory=OidcSettings)

    def check(self) -> None:
        self.oidc.check()
        for name in ("lockout_threshold", "lockout_s", "session_idle_timeout_s",
                     "session_absolute_timeout_s", "login_rate_limit",
                     "login_rate_window_s", "token_max_days"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[security] {name} must be positive")
        if self.password_min_length < 8:
            raise ConfigError("[security] password_min_length must be at least 8")
        if not 0 <= self.auth_cache_ttl_s <= 60:
            raise ConfigError("[security] auth_cache_ttl_s is 0 to 60 seconds")
        if self.password_history < 1:
            raise ConfigError("[security] password_history must be at least 1")
        if self.password_max_age_days < 0 or self.inactive_disable_days < 0:
            raise ConfigError("[security] password_max_age_days and inactive_disable_days "
                              "are 0 (off) or positive")
        try:
            [ipaddress.ip_network(str(n).strip(), strict=False) for n in self.trusted_proxies]
        except ValueError:
            raise ConfigError("[security] trusted_proxies: each entry must be an IP "
                              "address or network (CIDR)") from None
        for code in [*self.default_institutions, *self.institution_map.values()]:
            if not isinstance(code, str) or not code or "," in code or len(code) > 64:
                raise ConfigError("[security] institution codes are 1-64 characters "
                                  "without a comma")


@dataclass
class JobsSettings:
    """The persistent job queue and its runner in ``pacsd serve`` (docs/jobs.md, R-B2)."""

    #: Run queued jobs in this process (several processes may share one PostgreSQL).
    enabled: bool = True
    #: Jobs run at the same time by this process.
    concurrency: int = 4
    #: Seconds a claimed job is leased; a running job renews it every third of it, a
    #: crashed process's jobs are taken again once it expires.
    lease_s: float = 60.0
    #: Seconds between looks at the queue for jobs queued by other processes.
    poll_interval_s: float = 1.0
    #: Attempts before a job goes to the dead letter state (a job kind may set its own).
    max_attempts: int = 10
    #: Retry n waits backoff_base_s * 2**(n-1) seconds, at most backoff_max_s, minus up
    #: to backoff_jitter of it at random.
    backoff_base_s: float = 10.0
    backoff_max_s: float = 3600.0
    backoff_jitter: float = 0.2
    #: Days finished (done) jobs are kept; dead jobs stay until resubmitted.
    keep_done_days: float = 7.0

    def check(self) -> None:
        for name in ("concurrency", "lease_s", "poll_interval_s", "max_attempts",
                     "backoff_base_s", "backoff_max_s", "keep_done_days"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[jobs] {name} must be positive")
        if not 0 <= self.backoff_jitter < 1:
            raise ConfigError("[jobs] backoff_jitter must be at least 0 and below 1")


@dataclass(frozen=True)
class ForwardDestination:
    """One ``[forward.destinations.<name>]`` table, checked (docs/forwarding.md)."""

    name: str
    type: str                      # "dicomweb" | "dimse"
    url: str = ""                  # dicomweb: the STOW-RS URL (.../studies)
    token: str = ""                # dicomweb: bearer token ($env:/$file: resolved)
    ae_title: str = ""             # dimse: the called AE title
    host: str = ""
    port: int = 0
    calling_ae_title: str = ""     # dimse: our AE title towards it ([server] ae_title)
    timeout_s: float = 60.0
    instances_per_request: int = 50

    def where(self) -> str:
        """Where it sends, without credentials (log, audit ``location``)."""
        if self.type == "dimse":
            return f"dicom://{self.ae_title}@{self.host}:{self.port}"
        from urllib.parse import urlsplit, urlunsplit
        parts = urlsplit(self.url)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=host))


@dataclass
class ForwardSettings:
    """Store-and-forward (R-B2, R-B3, R-A9; docs/forwarding.md)."""

    #: Minutes from a study's first arrival to its confirmed delivery at a destination
    #: after which an alert is raised (R-A9: 20 minutes).
    sla_minutes: float = 20.0
    #: Seconds between checks of the upload clocks.
    sla_check_interval_s: float = 30.0
    #: Seconds a study's forwarding job waits after the first instance, so the
    #: instances arriving meanwhile go in the same job (batching per study).
    batch_delay_s: float = 2.0
    #: Attempts of a forwarding job before it goes to the dead letter state.
    max_attempts: int = 20
    #: Destinations by name: tables with ``type = "dicomweb"`` (``url``, ``token``) or
    #: ``type = "dimse"`` (``ae_title``, ``host``, ``port``); see docs/forwarding.md.
    destinations: dict[str, Any] = field(default_factory=dict)
    #: Rules: tables with ``destinations`` (names) and ``match`` (DICOM keyword or
    #: ``calling_aet`` -> value or list of values, ``*``/``?`` wildcards).
    rules: list[Any] = field(default_factory=list)

    DESTINATION_KEYS = frozenset({"type", "url", "token", "ae_title", "host", "port",
                                  "calling_ae_title", "timeout_s", "instances_per_request"})
    RULE_KEYS = frozenset({"name", "destinations", "match"})

    def parsed_destinations(self) -> dict[str, ForwardDestination]:
        out = {}
        for name, conf in self.destinations.items():
            where = f"[forward.destinations.{name}]"
            if not isinstance(conf, dict):
                raise ConfigError(f"{where} must be a table")
            unknown = set(conf) - self.DESTINATION_KEYS
            if unknown:
                raise ConfigError(f"unknown setting {where} " + ", ".join(sorted(unknown)))
            conf = {k: _resolve_secret(v) for k, v in conf.items()}
            kind = conf.get("type")
            try:
                dest = ForwardDestination(name=name, **conf)
            except TypeError:
                raise ConfigError(f"{where}: bad settings") from None
            if kind == "dicomweb":
                if not isinstance(dest.url, str) or not dest.url.startswith(
                        ("http://", "https://")):
                    raise ConfigError(f"{where} needs url = the STOW-RS URL (http[s]://)")
            elif kind == "dimse":
                if not (isinstance(dest.ae_title, str) and 0 < len(dest.ae_title) <= 16
                        and dest.host and isinstance(dest.port, int)
                        and 0 < dest.port < 65536):
                    raise ConfigError(f"{where} needs ae_title, host and port")
            else:
                raise ConfigError(f'{where} type must be "dicomweb" or "dimse"')
            if not isinstance(dest.timeout_s, (int, float)) or dest.timeout_s <= 0 or \
                    not isinstance(dest.instances_per_request, int) or \
                    dest.instances_per_request < 1:
                raise ConfigError(f"{where}: timeout_s and instances_per_request must "
                                  "be positive")
            out[name] = dest
        return out

    def check(self) -> None:
        names = self.parsed_destinations()
        for n, rule in enumerate(self.rules, 1):
            where = f"[[forward.rules]] entry {n}"
            if not isinstance(rule, dict):
                raise ConfigError(f"{where} must be a table")
            unknown = set(rule) - self.RULE_KEYS
            if unknown:
                raise ConfigError(f"unknown setting {where}: " + ", ".join(sorted(unknown)))
            dests = rule.get("destinations")
            if not isinstance(dests, list) or not dests or not all(
                    isinstance(d, str) for d in dests):
                raise ConfigError(f"{where} needs destinations = [names]")
            missing = [d for d in dests if d not in names]
            if missing:
                raise ConfigError(f"{where}: unknown destination {missing[0]!r}")
            match = rule.get("match", {})
            if not isinstance(match, dict) or not all(
                    isinstance(v, str) or (isinstance(v, list) and v and all(
                        isinstance(x, str) for x in v)) for v in match.values()):
                raise ConfigError(f"{where}: match values are strings or lists of strings")
        for name in ("sla_minutes", "sla_check_interval_s", "max_attempts"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[forward] {name} must be positive")
        if self.batch_delay_s < 0:
            raise ConfigError("[forward] batch_delay_s must not be negative")


@dataclass
class RetentionSettings:
    """Retention periods, legal hold and purge (R-A7; docs/operations.md "Retention")."""

    #: Apply the periods: DELETE inside retention answers 409 and ``pacsd retention
    #: purge`` deletes only expired studies. A legal hold vetoes deletion either way.
    enabled: bool = True
    #: Years an outpatient study is kept from the visit.
    outpatient_years: int = 15
    #: Years an inpatient study is kept from discharge.
    inpatient_years: int = 30
    #: Class of a study whose class is unknown: "longest", "outpatient" or "inpatient".
    default_class: str = "longest"

    def check(self) -> None:
        if self.outpatient_years < 1 or self.inpatient_years < 1:
            raise ConfigError("[retention] outpatient_years and inpatient_years must be "
                              "at least 1")
        if self.default_class not in ("longest", "outpatient", "inpatient"):
            raise ConfigError('[retention] default_class is "longest", "outpatient" or '
                              '"inpatient"')


@dataclass
class WorklistSettings:
    """Where the worklist's visit attributes come from (R-D2; docs/viewer.md "Worklist").

    Each ``*_attribute`` is a DICOM keyword read when a study row is created at ingest
    (a sequence keyword means the first item's ID: OtherPatientIDsSequence -> its
    PatientID). ``pacsd worklist reindex`` re-reads them for stored studies."""

    #: Visit (encounter) number: Admission ID (0038,0010), the HL7 PV1-19 visit number.
    visit_number_attribute: str = "AdmissionID"
    #: Patient card number (outpatient / insurance card): the first Other Patient IDs
    #: Sequence (0010,1002) item's Patient ID.
    card_number_attribute: str = "OtherPatientIDsSequence"
    #: Ordering department: Requesting Service (0032,1033) of the Imaging Service Request.
    department_attribute: str = "RequestingService"
    #: Visit type source: Route of Admissions (0038,0016), where HL7 PV1-2 Patient Class
    #: is mapped (as dcm4chee does), mapped through visit_type_map (case-insensitive).
    visit_type_attribute: str = "RouteOfAdmissions"
    #: Value (upper-cased) -> "outpatient" | "inpatient" | "emergency" | "physical-exam".
    visit_type_map: dict[str, str] = field(default_factory=lambda: {
        "O": "outpatient", "OUTPATIENT": "outpatient", "I": "inpatient",
        "INPATIENT": "inpatient", "E": "emergency", "EMERGENCY": "emergency",
        "PE": "physical-exam", "PHYSICAL-EXAM": "physical-exam"})
    #: A study with no mapped visit type but a visit number is "inpatient" (the retention
    #: rule, R-A7: an Admission ID means an inpatient stay); false: it stays unknown.
    visit_number_means_inpatient: bool = True

    def check(self) -> None:
        from pydicom.datadict import tag_for_keyword
        for key in ("visit_number_attribute", "card_number_attribute",
                    "department_attribute", "visit_type_attribute"):
            kw = getattr(self, key)
            if kw and tag_for_keyword(kw) is None:
                raise ConfigError(f"[worklist] {key} is not a DICOM keyword")
        from .model import VISIT_TYPES
        bad = sorted(v for v in self.visit_type_map.values() if v not in VISIT_TYPES)
        if bad:
            raise ConfigError("[worklist] visit_type_map values are " + ", ".join(VISIT_TYPES))


@dataclass
class AuditSyslogSettings:
    """DICOM audit messages (PS3.15 A.5) sent to a syslog collector, the hospital SOC
    (MLPS 13; docs/security.md "Syslog export"). Delivery follows the audit table with
    a cursor: at-least-once, resumed after an outage, never on the request path."""

    enabled: bool = False
    #: Collector ``HOST:PORT`` (RFC 5425 TLS: 6514 is the registered port).
    address: str = ""
    #: "tls" (RFC 5425, octet-counted frames) or "udp" (RFC 5426, one datagram each;
    #: unencrypted and lossy: only inside a trusted network).
    transport: str = "tls"
    #: CA certificates (PEM) that issued the collector's certificate; empty = the system's.
    tls_ca: str = ""
    #: Client certificate and key (PEM) when the collector requires mutual TLS.
    tls_cert: str = ""
    tls_key: str = ""
    #: RFC 5424 APP-NAME and HOSTNAME (empty = this machine's name); also the
    #: AuditSourceID of every message.
    app_name: str = "pacsd"
    hostname: str = ""
    #: AuditEnterpriseSiteID (the hospital / campus running this archive).
    enterprise_site_id: str = ""
    #: Name the patient (PatientID) in messages about a study, as PS3.15 A.5 requires;
    #: false = the study UID only.
    patient_id: bool = True
    #: Events sent per round; seconds between reconnect attempts while the collector is down.
    batch: int = 200
    retry_s: float = 5.0

    def check(self) -> None:
        if self.transport not in ("tls", "udp"):
            raise ConfigError('[audit.syslog] transport is "tls" or "udp"')
        if self.enabled:
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError("[audit.syslog] address must be HOST:PORT")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("[audit.syslog] tls_cert and tls_key go together")
        if self.batch < 1 or self.retry_s <= 0:
            raise ConfigError("[audit.syslog] batch and retry_s must be positive")


@dataclass
class AuditSettings:
    """The audit trail's retention and export (docs/security.md §6; MLPS 11, 13)."""

    #: Days an audit event is kept. 0 = forever (default). Otherwise events older than
    #: max(180, retention_days) days are deleted daily (and by ``pacsd audit prune``);
    #: the hash chain is re-anchored so ``pacsd audit verify`` still passes.
    retention_days: int = 0
    syslog: AuditSyslogSettings = field(default_factory=AuditSyslogSettings)

    def check(self) -> None:
        if self.retention_days < 0:
            raise ConfigError("[audit] retention_days is 0 (keep forever) or positive")
        self.syslog.check()


@dataclass
class EncryptionSettings:
    """Encryption at rest of the blob store (R-G1; docs/security.md "Encryption at rest")."""

    #: Encrypt new objects (every copy). Off by default; existing plaintext objects stay
    #: readable (``pacsd keys encrypt-existing`` converts them).
    enabled: bool = False
    #: Directory of the key-encryption keys (``pacsd keys init``), mode 0700, files 0600.
    #: Must be outside ``[server] data_dir``; back it up separately (docs/operations.md).
    key_dir: str = ""
    #: "AES-256-GCM" or "SM4-GCM" (GB/T 32907, for new keys; existing keys keep theirs).
    cipher: str = "AES-256-GCM"
    #: Per-institution keys: the first object of a new institution creates its key.
    #: Off: institution keys made with ``pacsd keys init --institution`` are still used,
    #: other objects use the default key.
    per_institution_keys: bool = True
    #: Plaintext bytes per authenticated segment (range reads decrypt whole segments).
    segment_size: int = 65536

    def check(self) -> None:
        if self.cipher not in ("AES-256-GCM", "SM4-GCM"):
            raise ConfigError('[encryption] cipher is "AES-256-GCM" or "SM4-GCM"')
        if not 1024 <= self.segment_size <= 16 << 20:
            raise ConfigError("[encryption] segment_size must be between 1024 and 16777216")


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)
    dimse: DimseSettings = field(default_factory=DimseSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    worklist: WorklistSettings = field(default_factory=WorklistSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- derived values -------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser().resolve()

    @property
    def storage_url(self) -> str:
        return self.storage.url or str(self.data_path / "blobs")

    @property
    def index_url(self) -> str:
        return self.index.url or f"sqlite:///{self.data_path / 'index.db'}"

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.server.http.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("server.http must be HOST:PORT")
        return host.strip("[]"), int(port)

    def http_is_loopback(self) -> bool:
        host, _ = self.http_host_port
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def _resolve_secret(value: Any) -> Any:
    """``$env:NAME`` / ``$file:/path`` indirection for secrets."""
    if isinstance(value, str) and value.startswith("$env:"):
        return os.environ.get(value[5:], "")
    if isinstance(value, str) and value.startswith("$file:"):
        return Path(value[6:]).read_text().strip()
    return value


def _fill(obj: Any, data: dict[str, Any], section: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown setting [{section}] {key}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):  # a sub-table such as [audit.syslog]
            if not isinstance(value, dict):
                raise ConfigError(f"setting [{section}] {key} is a table")
            _fill(current, value, f"{section}.{key}")
            continue
        value = _resolve_secret(value)
        if isinstance(current, bool) != isinstance(value, bool) or (
            isinstance(current, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(current, str) and not isinstance(value, str)) or (
            isinstance(current, list) and not isinstance(value, list)
        ) or (isinstance(current, dict) and not isinstance(value, dict)):
            raise ConfigError(f"setting [{section}] {key} has the wrong type")
        setattr(obj, key, type(current)(value) if isinstance(current, (int, float)) and not isinstance(current, bool) else value)


def load_settings(path: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), then apply ``section__key=value`` overrides."""
    settings = Settings()
    if path:
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"cannot parse {path}: {exc}") from None
        for section, values in data.items():
            if section == "plugins":
                settings.plugins = dict(values)
                continue
            target = getattr(settings, section, None)
            if target is None or not dataclasses.is_dataclass(target) or not isinstance(values, dict):
                raise ConfigError(f"unknown settings section [{section}]")
            _fill(target, values, section)
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition("__")
        _fill(getattr(settings, section), {name: value}, section)
    if settings.server.workers < 0:
        raise ConfigError("[server] workers is 0 (one per CPU) or more")
    settings.dimse.check()
    settings.security.check()
    settings.jobs.check()
    settings.forward.check()
    settings.retention.check()
    settings.worklist.check()
    settings.audit.check()
    settings.encryption.check()
    if settings.storage.compress not in ("none", "jpeg-ls-lossless", "jpeg2000-lossless"):
        raise ConfigError('[storage] compress is "none", "jpeg-ls-lossless" or '
                          '"jpeg2000-lossless"')
    return settings


def settings_as_toml_defaults() -> dict[str, dict[str, Any]]:
    """The default of every setting, by section (the example file is checked against it)."""
    s = Settings()
    return {
        name: dataclasses.asdict(getattr(s, name))
        for name in ("server", "storage", "index", "dicomweb", "dimse", "security",
                     "jobs", "forward", "retention", "worklist", "audit", "encryption")
    }
