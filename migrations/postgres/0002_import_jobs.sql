-- What the search index reads for each chunk (see src/search).
ALTER TABLE chunks ADD COLUMN search_text TEXT NOT NULL DEFAULT '';

-- A staged upload is also its import job: who runs it, until when
-- (lease, renewed by a heartbeat), how many times it was started, and
-- which queue dispatches it ('redis' stream or an instance's 'local' queue).
ALTER TABLE staged_uploads ADD COLUMN claimed_by TEXT;
ALTER TABLE staged_uploads ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE staged_uploads ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE staged_uploads ADD COLUMN queue TEXT NOT NULL DEFAULT 'local';
CREATE INDEX staged_uploads_by_lease ON staged_uploads (lease_until);
