"""Event contracts: the only code services share (DESIGN.md section 2)."""

from . import events
from .codes import (
    NUBC_DISCHARGE_DISPOSITIONS,
    POST_ACUTE_SERVICE_BY_DISCHARGE,
    DischargeCategory,
    PatientClass,
    ServiceCategory,
    discharge_category,
    npi_check_digit_ok,
    npi_with_check_digit,
)
from .envelope import (
    MAX_EVENT_BYTES,
    CloudEvent,
    ContractError,
    EventData,
    EventType,
    new_event,
    parse_event,
    register_upcaster,
    registered_types,
    type_of,
)
from .events import *  # noqa: F403  - the event models are this package's surface
from .topics import MEMBER_PARTITIONS, TopicSpec, all_topic_specs, dlq_topic, topic_name

__all__ = [
    "MAX_EVENT_BYTES",
    "MEMBER_PARTITIONS",
    "NUBC_DISCHARGE_DISPOSITIONS",
    "POST_ACUTE_SERVICE_BY_DISCHARGE",
    "CloudEvent",
    "ContractError",
    "DischargeCategory",
    "EventData",
    "EventType",
    "PatientClass",
    "ServiceCategory",
    "TopicSpec",
    "all_topic_specs",
    "discharge_category",
    "dlq_topic",
    "events",
    "new_event",
    "npi_check_digit_ok",
    "npi_with_check_digit",
    "parse_event",
    "register_upcaster",
    "registered_types",
    "topic_name",
    "type_of",
    *events.__all__,
]
