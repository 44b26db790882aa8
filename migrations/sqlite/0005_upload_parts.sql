-- A staged upload's bytes are stored in parts of at most 1 MiB, so that
-- staging an upload and feeding it to its parse worker never holds more than
-- one part of it in the service's memory (a single BLOB is read and written
-- whole). `seq` orders the parts from 0. Deleting the upload deletes them.
CREATE TABLE staged_upload_parts (
    user_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (user_id, task_id, seq),
    FOREIGN KEY (user_id, task_id) REFERENCES staged_uploads (user_id, task_id) ON DELETE CASCADE
);

-- The size of the upload, which the parse worker is told as its input limit.
ALTER TABLE staged_uploads ADD COLUMN size_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE staged_uploads SET size_bytes = length(content);

-- Uploads staged before this migration are cut into parts of 1 MiB here, so
-- that their imports read them like any other. An empty upload gets no part.
WITH RECURSIVE part(user_id, task_id, seq) AS (
    SELECT user_id, task_id, 0 FROM staged_uploads WHERE length(content) > 0
    UNION ALL
    SELECT part.user_id, part.task_id, part.seq + 1
    FROM part JOIN staged_uploads AS s ON s.user_id = part.user_id AND s.task_id = part.task_id
    WHERE (part.seq + 1) * 1048576 < length(s.content)
)
INSERT INTO staged_upload_parts (user_id, task_id, seq, data)
SELECT part.user_id, part.task_id, part.seq, substr(s.content, part.seq * 1048576 + 1, 1048576)
FROM part JOIN staged_uploads AS s ON s.user_id = part.user_id AND s.task_id = part.task_id;

ALTER TABLE staged_uploads DROP COLUMN content;
