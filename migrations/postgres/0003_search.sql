-- Full-text search over chunks (see src/search).
--
-- chunks.search_text holds the chunk's words as segmented by jieba in Rust,
-- lower-cased and space-joined; the 'simple' configuration indexes them as
-- they are (no stemming, no stop words), Chinese included. A stored
-- generated column is written and deleted with its row, so importing or
-- deleting a document needs no search code, and ts_rank reads it instead of
-- parsing the text again for every match.
ALTER TABLE chunks
    ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED;

CREATE INDEX chunks_search ON chunks USING GIN (search_tsv);

-- For the user (and document) filter of a search.
CREATE INDEX chunks_by_user ON chunks (user_id, document_id);
