"""Kafka event bus for lineloop services (see bus.py for the processing path)."""

from lineloop.bus.bus import Batch, Bus, Delivery, EventContext, kafka_group_id
from lineloop.bus.cloudevents import Envelope
from lineloop.bus.errors import Reject
from lineloop.bus.security import KafkaSecurity

__all__ = ["Batch", "Bus", "Delivery", "Envelope", "EventContext", "KafkaSecurity", "Reject", "kafka_group_id"]
