-- Full-text search over chunks (see src/search).
--
-- chunks.search_text holds the chunk's words as segmented by jieba in Rust,
-- lower-cased and space-joined, so unicode61 only has to split on spaces
-- (it keeps a run of Chinese characters together as one token). Diacritics
-- are kept, as PostgreSQL's 'simple' configuration keeps them, so that both
-- databases match the same words.
--
-- search_owner is the chunk's user id as one token (its bytes in hex: one
-- unicode61 token, and distinct for distinct ids). Indexing it lets a search
-- intersect its words with the user's chunks inside FTS5 and rank only
-- those, rather than rank every user's matches and filter afterwards.
ALTER TABLE chunks ADD COLUMN search_owner TEXT GENERATED ALWAYS AS (lower(hex(user_id))) VIRTUAL;

-- An external-content table stores the index only, not a second copy of the
-- text. It is keyed by the implicit rowid of chunks. Note: VACUUM may
-- renumber the rowids of a table without an INTEGER PRIMARY KEY; after a
-- VACUUM, run  INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild');
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    search_text,
    search_owner,
    content = 'chunks',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 0'
);

-- The triggers keep the index in step with chunks, inside the writer's
-- transaction: importing or deleting a document needs no search code.
CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, search_text, search_owner) VALUES (new.rowid, new.search_text, new.search_owner);
END;

CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, search_text, search_owner)
        VALUES ('delete', old.rowid, old.search_text, old.search_owner);
END;

CREATE TRIGGER chunks_fts_update AFTER UPDATE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, search_text, search_owner)
        VALUES ('delete', old.rowid, old.search_text, old.search_owner);
    INSERT INTO chunks_fts (rowid, search_text, search_owner) VALUES (new.rowid, new.search_text, new.search_owner);
END;

-- Index the chunks stored before this migration.
INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild');

-- The document filter of a search reads the rowids of the chosen documents'
-- chunks from this index alone, without touching the large rows.
CREATE INDEX chunks_by_user ON chunks (user_id, document_id);
