"""Producer toolkit: the ways outside systems get events into the hub.

* :mod:`.hl7_adt` - HL7 v2 ADT messages to encounter events (python-hl7);
* :mod:`.mllp` - an asyncio MLLP listener that ACKs only after the broker accepted the event,
  and an MLLP client;
* :mod:`.fhir_in` - FHIR R4 Encounter / ServiceRequest (and Bundles of them);
* :mod:`.files` - roster, claims and provider-directory CSV/NDJSON, streamed;
* :mod:`.synthetic` - a deterministic synthetic population and its timeline;
* :mod:`.publish` - acknowledged and pipelined publishing of CloudEvents;
* :mod:`.replay` - replay a timeline (as fast as possible, real time or xN), directly or over
  MLLP, and start an in-process MLLP listener;
* :mod:`.cli` - the ``cth`` command (publish, generate, replay, listen).
"""
