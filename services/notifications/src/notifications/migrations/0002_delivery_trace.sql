-- W3C trace context of the handler that queued the delivery: the webhook / FHIR attempt
-- continues the trace of the event that created the alert (one trace per care transition).
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS traceparent text;
