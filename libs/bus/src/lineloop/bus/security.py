"""How every Kafka client of a deployment connects: TLS (a plant's own CA, optionally a client
certificate) and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).

One FastStream security object for the bus's broker; the aiokafka clients the bus does not own
(the topics admin, the CLI's readers and writers, ingest's reconcile job) get the same options
from FastStream's own mapping (`parse_security`), so no client can be configured apart. Set by
`LINELOOP_KAFKA_*` (lineloop.runtime.StackSettings.kafka_security()); docs/security.md.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faststream.security import BaseSecurity

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# FastStream's security class of each SASL mechanism (imported where used: settings that only
# validate, as the CLI's, do not load FastStream).
MECHANISMS = {"PLAIN": "SASLPlaintext", "SCRAM-SHA-256": "SASLScram256", "SCRAM-SHA-512": "SASLScram512"}


@dataclasses.dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    ca_file: Path | None = None      # None with TLS: the system's trusted CAs
    cert_file: Path | None = None    # a client certificate (brokers that require mTLS)
    key_file: Path | None = None
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"LINELOOP_KAFKA_SECURITY_PROTOCOL {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.sasl and self.sasl_mechanism not in MECHANISMS:
            problems.append(f"LINELOOP_KAFKA_SASL_MECHANISM {self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if self.sasl and not (self.username and self.password):
            problems.append(f"{self.protocol} needs LINELOOP_KAFKA_SASL_USERNAME and LINELOOP_KAFKA_SASL_PASSWORD")
        if not self.tls and (self.ca_file or self.cert_file):
            # Fail closed: TLS files for a plaintext protocol mean the operator expects TLS.
            problems.append(f"LINELOOP_KAFKA_CA_FILE/CERT_FILE are set but the protocol is {self.protocol}, not SSL or SASL_SSL")
        if bool(self.cert_file) != bool(self.key_file):
            problems.append("LINELOOP_KAFKA_CERT_FILE and LINELOOP_KAFKA_KEY_FILE go together")
        for name, path in (("CA_FILE", self.ca_file), ("CERT_FILE", self.cert_file), ("KEY_FILE", self.key_file)):
            if path is not None and not Path(path).is_file():
                problems.append(f"LINELOOP_KAFKA_{name} {path} is not a readable file")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the broker's certificate and host name, always; no switch turns that off.

        Built anew for each client (a few ms, once per connection's life): certificate files an
        operator rotated are read by the next client, with no cache to go stale."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def faststream(self) -> BaseSecurity | None:
        """The security object for FastStream's KafkaBroker (None: plaintext)."""
        import faststream.security

        if self.protocol == "PLAINTEXT":
            return None
        context = self.ssl_context()
        if not self.sasl:
            return faststream.security.BaseSecurity(ssl_context=context, use_ssl=True)
        mechanism = getattr(faststream.security, MECHANISMS[self.sasl_mechanism])
        return mechanism(self.username, self.password, ssl_context=context, use_ssl=self.tls)

    def client_options(self) -> dict[str, Any]:
        """The same as keyword arguments of aiokafka's producer, consumer and admin client."""
        from faststream.kafka.security import parse_security

        return parse_security(self.faststream())


PLAINTEXT = KafkaSecurity()
