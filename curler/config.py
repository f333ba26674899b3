"""Configuration: every option declared once, read from the INI file, the environment and the command line.

Precedence is command line, then ``CURLER_<NAME>`` environment variables, then
the ``[curlerd]`` section of the file given with ``-c``, then the default.
``[queue:NAME]`` sections override a few options for one queue.
"""

import configparser
import dataclasses
import os
import stat
import urllib.parse
from collections import OrderedDict

import configargparse

from . import gearman

PROG = "curlerd"
ENV_PREFIX = "CURLER_"
MAIN_SECTION = "curlerd"
QUEUE_SECTION_PREFIX = "queue:"
MAX_WORKERS = 1024
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
POST_FORMATS = ("form", "json", "legacy")


class ConfigError(Exception):
    """The configuration is invalid; the message names the option, the value and the accepted form."""


# -- converters: each takes the raw text and returns the value or raises ValueError("expected ...") --

def to_urls(text):
    urls = []
    for part in split_list(text):
        parts = urllib.parse.urlsplit(part)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{part!r} is not an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError(f"{part!r} has a query or fragment; give a base URL such as http://localhost/jobs")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"{part!r} has an invalid port") from None
        urls.append(part.rstrip("/"))
    if not urls:
        raise ValueError("expected at least one base URL, such as http://localhost/jobs")
    return tuple(urls)


def to_queues(text):
    queues = split_list(text)
    for queue in queues:
        if any(c.isspace() or c == "\0" for c in queue) or len(queue.encode()) > 255:
            raise ValueError(f"queue name {queue!r} must be 1 to 255 bytes without spaces")
    if not queues:
        raise ValueError("expected at least one queue name, such as curl")
    return tuple(dict.fromkeys(queues))


def to_servers(text):
    servers = tuple(gearman.parse_server(part) for part in split_list(text))
    if not servers:
        raise ValueError("expected at least one host:port, such as localhost:4730")
    return servers


def split_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def int_range(low, high=None):
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            upper = f" to {high}" if high is not None else " or more"
            raise ValueError(f"expected a whole number from {low}{upper}")
        return value
    return convert


def seconds(minimum=0.0, allow_zero=False):
    def convert(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or value != value or value < minimum or (value == 0 and not allow_zero):
            raise ValueError("expected a number of seconds greater than 0" if not allow_zero
                             else "expected a number of seconds, 0 or more")
        return value
    return convert


def choice(*choices):
    def convert(text):
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value
    return convert


def optional_text(text):
    return text.strip() or None


def port_or_off(text):
    if text.strip().lower() in ("", "0", "off", "none"):
        return None
    return int_range(1, 65535)(text)


def to_bool(text):
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def default_workers():
    return os.cpu_count() or 1


def to_workers(text):
    if str(text).strip() == "":
        return default_workers()
    return int_range(1, MAX_WORKERS)(text)


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its flag, INI key, environment variable, default, converter and help."""

    name: str
    default: object
    convert: object
    help: str
    flag: bool = False
    per_queue: bool = False
    metavar: str = None

    @property
    def attribute(self):
        return self.name.replace("-", "_")

    @property
    def env_var(self):
        return ENV_PREFIX + self.name.upper().replace("-", "_")


OPTIONS = (
    # Delivery
    Option("curl-paths", "http://localhost", to_urls, "base URLs, comma-separated; each job goes to one chosen at random, plus '/' and its method", per_queue=True, metavar="URLS"),
    Option("job-queue", "curl", to_queues, "Gearman functions (queues) to work on, comma-separated", metavar="QUEUES"),
    Option("job-servers", "localhost:4730", to_servers, "Gearman job servers as host:port, comma-separated; every child works on all of them", metavar="SERVERS"),
    Option("timeout", "60", seconds(), "seconds one HTTP request may take in all, from connecting to the last byte of the response", per_queue=True, metavar="SECONDS"),
    Option("connect-timeout", "5", seconds(), "seconds to wait for the TCP and TLS connection to a base URL", metavar="SECONDS"),
    Option("max-attempts", "5", int_range(1, 100), "attempts per job, the first included, before a transient failure becomes final", per_queue=True, metavar="N"),
    Option("retry-min-backoff", "1", seconds(), "seconds of the first retry backoff; it doubles per attempt, with full jitter", metavar="SECONDS"),
    Option("retry-max-backoff", "60", seconds(), "maximum seconds between two attempts, Retry-After included", metavar="SECONDS"),
    Option("max-response-bytes", "1048576", int_range(0), "bytes of a response body read at most; the rest is cut off with a warning", metavar="BYTES"),
    Option("post-format", "form", choice(*POST_FORMATS), "request body: form (data as form fields), json (data as a JSON object) or legacy (the original curler's data and job_handle fields)", per_queue=True, metavar="FORMAT"),
    Option("dead-letter-queue", "{queue}.failed", str.strip, "queue that receives jobs that failed for good; {queue} is the job's queue; empty turns dead letters off", per_queue=True, metavar="QUEUE"),
    Option("signing-secret-file", "", optional_text, "file with the HMAC-SHA256 key that signs each request (X-Curler-Signature); must not be readable by other users", per_queue=True, metavar="PATH"),
    Option("ca-bundle", "", optional_text, "CA certificates file for verifying https base URLs (default: the certifi bundle)", metavar="PATH"),
    Option("proxy", "", optional_text, "proxy URL for every request, such as http://proxy:3128 (default: none)", metavar="URL"),
    Option("trust-env", False, to_bool, "honour HTTP_PROXY, HTTPS_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE from the environment", flag=True),
    # Processes
    Option("workers", "", to_workers, "number of child processes (default: the number of CPUs)", per_queue=True, metavar="N"),
    Option("graceful-timeout", "30", seconds(), "seconds a drain waits for children to finish their jobs before killing them", metavar="SECONDS"),
    Option("max-job-crashes", "3", int_range(1), "children a job may crash before it is failed and dead-lettered instead of run again", metavar="N"),
    Option("max-jobs-per-child", "0", int_range(0), "jobs after which a child exits and is replaced; 0 means unlimited", metavar="N"),
    Option("max-jobs-jitter", "0", int_range(0), "random extra 0..N jobs added to max-jobs-per-child per child", metavar="N"),
    Option("max-memory-per-child", "0", int_range(0), "resident memory in MiB after which a child exits between jobs and is replaced; 0 means unlimited", metavar="MIB"),
    Option("pidfile", "", optional_text, "file that receives the supervisor's pid (default: none)", metavar="PATH"),
    Option("daemon", False, to_bool, "detach from the terminal and run in the background", flag=True),
    Option("user", "", optional_text, "user to run as after the pidfile and log file are opened (when started as root)", metavar="USER"),
    Option("group", "", optional_text, "group to run as (default: the user's primary group)", metavar="GROUP"),
    # Logging and monitoring
    Option("log-file", "", optional_text, "log file (default: standard error); 'syslog' sends to the local syslog socket", metavar="PATH"),
    Option("log-level", "info", choice(*LOG_LEVELS), "minimum level logged: " + ", ".join(LOG_LEVELS), metavar="LEVEL"),
    Option("verbose", False, to_bool, "log each request and response, with secrets redacted and bodies truncated", flag=True),
    Option("metrics-port", "", port_or_off, "TCP port of the Prometheus metrics endpoint (default: off)", metavar="PORT"),
    Option("metrics-address", "127.0.0.1", str.strip, "address the metrics endpoint listens on", metavar="ADDRESS"),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}
QUEUE_OPTION_NAMES = tuple(option.name for option in OPTIONS if option.per_queue)


@dataclasses.dataclass(frozen=True)
class QueueSettings:
    """The delivery settings of one queue: the global ones, overridden by its [queue:NAME] section."""

    name: str
    curl_paths: tuple
    timeout: float
    max_attempts: int
    post_format: str
    dead_letter_queue: str
    signing_secret_file: str
    signing_secret: bytes = dataclasses.field(default=None, repr=False)
    workers: int = 0  # children dedicated to this queue; 0 means it shares the main group


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated configuration of one curlerd run."""

    config_file: str
    curl_paths: tuple
    job_queue: tuple
    job_servers: tuple
    timeout: float
    connect_timeout: float
    max_attempts: int
    retry_min_backoff: float
    retry_max_backoff: float
    max_response_bytes: int
    post_format: str
    dead_letter_queue: str
    signing_secret_file: str
    ca_bundle: str
    proxy: str
    trust_env: bool
    workers: int
    graceful_timeout: float
    max_job_crashes: int
    max_jobs_per_child: int
    max_jobs_jitter: int
    max_memory_per_child: int
    pidfile: str
    daemon: bool
    user: str
    group: str
    log_file: str
    log_level: str
    verbose: bool
    metrics_port: int
    metrics_address: str
    queues: dict  # queue name -> QueueSettings

    def worker_groups(self):
        """Return ``[(queues, children)]``: one group per dedicated queue, then the shared group."""
        dedicated = [(q.name,) for q in self.queues.values() if q.workers]
        groups = [(names, self.queues[names[0]].workers) for names in dedicated]
        shared = tuple(name for name in self.job_queue if not self.queues[name].workers)
        if shared:
            groups.append((shared, self.workers))
        return groups

    def redacted(self):
        """Return the settings as text lines, without secrets, for --check-config."""
        lines = []
        for option in OPTIONS:
            value = getattr(self, option.attribute)
            if option.name == "proxy" and value:
                value = hide_password(value)
            lines.append(f"{option.name} = {format_value(value)}")
        for queue in self.queues.values():
            lines.append(f"[queue:{queue.name}] " + ", ".join(
                f"{name} = {format_value(getattr(queue, name.replace('-', '_')))}" for name in QUEUE_OPTION_NAMES))
        return lines


def format_value(value):
    if isinstance(value, tuple):
        return ",".join(gearman.format_server(v) if isinstance(v, tuple) else hide_password(str(v)) for v in value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def hide_password(url):
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(":" + parts.password + "@", ":[redacted]@", 1)


class IniFileParser(configargparse.ConfigFileParser):
    """Read the [curlerd] section (keys are long option names, '-' or '_') and keep [queue:NAME] sections."""

    def __init__(self):
        self.queue_sections = OrderedDict()
        self.path = None

    def get_syntax_description(self):
        return ("An INI file with a [curlerd] section whose keys are the long option names "
                "(curl-paths = http://localhost/jobs), and optional [queue:NAME] sections.")

    def parse(self, stream):
        self.path = getattr(stream, "name", "config file")
        ini = configparser.ConfigParser(interpolation=None, default_section="\0none")
        try:
            ini.read_file(stream)
        except configparser.Error as error:
            raise configargparse.ConfigFileParserException(f"cannot parse {self.path}: {error}".replace("\n", " "))
        values = OrderedDict()
        for section in ini.sections():
            keys = {normalize_key(k): v for k, v in ini.items(section)}
            if section == MAIN_SECTION:
                self.check_keys(section, keys, OPTIONS_BY_NAME)
                values.update(keys)
            elif section.startswith(QUEUE_SECTION_PREFIX) and section[len(QUEUE_SECTION_PREFIX):].strip():
                self.check_keys(section, keys, QUEUE_OPTION_NAMES)
                self.queue_sections[section[len(QUEUE_SECTION_PREFIX):].strip()] = keys
            else:
                raise configargparse.ConfigFileParserException(
                    f"unknown section [{section}] in {self.path}: expected [curlerd] or [queue:NAME]")
        for option in OPTIONS:
            if option.flag and option.name in values:
                values[option.name] = "true" if to_bool_or_raise(option, values[option.name], self.path) else "false"
        return values

    def check_keys(self, section, keys, known):
        for key in keys:
            if key not in known:
                raise configargparse.ConfigFileParserException(
                    f"unknown key '{key}' in [{section}] of {self.path}: expected one of " + ", ".join(known))


def to_bool_or_raise(option, text, path):
    try:
        return to_bool(text)
    except ValueError:
        raise configargparse.ConfigFileParserException(
            f"invalid {option.name} value {text!r} in {path}: expected true or false") from None


def normalize_key(key):
    return key.strip().lower().replace("_", "-")


class ArgParser(configargparse.ArgParser):
    """An argument parser that raises ConfigError instead of printing usage and exiting."""

    def error(self, message):
        raise ConfigError(message)


def build_parser(ini_parser):
    class SharedIniFileParser(IniFileParser):
        """Hands configargparse ``ini_parser`` itself, so the [queue:NAME] sections it reads stay reachable."""

        def __new__(cls):
            return ini_parser

    parser = ArgParser(
        prog=PROG,
        description="Deliver Gearman jobs to a web app as HTTP POST requests.",
        epilog="Every option can also be set as CURLER_<NAME> in the environment (CURLER_WORKERS=8) "
               "or as a key of the [curlerd] section of the -c file (workers = 8). "
               "Commands: curlerd status, curlerd replay-dead-letters, curlerd submit "
               "(each with --help). etc/curler.ini documents every option and its default.",
        config_file_parser_class=SharedIniFileParser,
        auto_env_var_prefix=ENV_PREFIX,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="INI file with a [curlerd] section (environment: CURLER_CONFIG)",
        add_env_var_help=False,
    )
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print the effective settings and exit")
    for option in OPTIONS:
        if option.flag:
            parser.add_argument("--" + option.name, action="store_true", default=None, help=option.help)
        else:
            parser.add_argument("--" + option.name, default=None, metavar=option.metavar, help=option.help)
    return parser


def load(argv, environ=None):
    """Parse and validate the configuration; raise ConfigError with every problem found."""
    environ = os.environ if environ is None else environ
    ini_parser = IniFileParser()
    parser = build_parser(ini_parser)
    config_from_env = environ.get(ENV_PREFIX + "CONFIG")
    if config_from_env and not any(arg in ("-c", "--config") or arg.startswith("--config=") for arg in argv):
        argv = ["-c", config_from_env, *argv]
    try:
        namespace = parser.parse_args(argv, env_vars=environ)
    except configargparse.ConfigFileParserException as error:
        raise ConfigError(str(error)) from None
    return validate(namespace, ini_parser.queue_sections), namespace.check_config


def validate(namespace, queue_sections):
    errors = []
    values = {}
    for option in OPTIONS:
        raw = getattr(namespace, option.attribute)
        if raw is None:
            raw = option.default
        values[option.attribute] = convert_option(option, raw, errors)

    queues = {}
    job_queue = values.get("job_queue") or ()
    for name, keys in queue_sections.items():
        if job_queue and name not in job_queue:
            errors.append(f"section [queue:{name}] names a queue that is not in job-queue "
                          f"({','.join(job_queue)}): add it to job-queue or remove the section")
    global_secret = read_secret(values.get("signing_secret_file"), errors)
    for name in job_queue:
        queues[name] = queue_settings(name, values, queue_sections.get(name, {}), global_secret, errors)
    values["queues"] = queues
    values["config_file"] = getattr(namespace, "config", None)

    check_relations(values, errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return Settings(**values)


def convert_option(option, raw, errors, where=""):
    try:
        return option.convert(raw)
    except ValueError as error:
        errors.append(f"invalid {option.name} value {str(raw)!r}{where}: {error}")
        return None


def queue_settings(name, values, overrides, global_secret, errors):
    where = f" in [queue:{name}]"
    fields = {}
    for option_name in QUEUE_OPTION_NAMES:
        option = OPTIONS_BY_NAME[option_name]
        if option_name in overrides:
            fields[option.attribute] = convert_option(option, overrides[option_name], errors, where)
        elif option_name == "workers":
            fields["workers"] = 0
        else:
            fields[option.attribute] = values[option.attribute]
    dead_letter_queue = fields.get("dead_letter_queue")
    if dead_letter_queue is not None:
        dead_letter_queue = fields["dead_letter_queue"] = dead_letter_queue.replace("{queue}", name)
        if dead_letter_queue in values.get("job_queue", ()):
            place = where if "dead-letter-queue" in overrides else ""
            errors.append(f"dead-letter-queue{place} is {dead_letter_queue!r}, which is also in job-queue: "
                          "failed jobs would be taken again as invalid payloads; choose another queue")
    if "signing-secret-file" in overrides:
        fields["signing_secret"] = read_secret(fields.get("signing_secret_file"), errors, where)
    else:
        fields["signing_secret"] = global_secret
    return QueueSettings(name=name, **fields)


def read_secret(path, errors, where=""):
    """Read a signing secret, rejecting a file that other users can read."""
    if not path:
        return None
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            errors.append(f"signing-secret-file {path!r}{where} is readable or writable by other users: "
                          f"run chmod o-rwx {path}")
            return None
        with open(path, "rb") as secret_file:
            secret = secret_file.read().strip()
    except OSError as error:
        errors.append(f"cannot read signing-secret-file {path!r}{where}: {error.strerror}")
        return None
    if not secret:
        errors.append(f"signing-secret-file {path!r}{where} is empty: write a random key into it")
        return None
    return secret


def check_relations(values, errors):
    if values.get("daemon") and not values.get("log_file"):
        errors.append("daemon = true needs log-file (a path or syslog): "
                      "a detached curlerd has no standard error to log to")
    low, high = values.get("retry_min_backoff"), values.get("retry_max_backoff")
    if low is not None and high is not None and low > high:
        errors.append(f"retry-min-backoff ({low}) is greater than retry-max-backoff ({high}): lower it or raise the maximum")
    proxy = values.get("proxy")
    if proxy and urllib.parse.urlsplit(proxy).scheme not in ("http", "https", "socks5", "socks5h"):
        errors.append(f"invalid proxy value {proxy!r}: expected a URL such as http://proxy:3128")
    ca_bundle = values.get("ca_bundle")
    if ca_bundle and not os.path.isfile(ca_bundle):
        errors.append(f"ca-bundle {ca_bundle!r} is not a file: give the path of a PEM file of CA certificates")


def help_text():
    parser = build_parser(IniFileParser())
    return parser.format_help()
