-- Usernames are unique by a canonical key, not by their spelling, so that
-- look-alike names (`ALICE`, fullwidth `ａｌｉｃｅ`, NFC and NFD spellings)
-- cannot be separate accounts. The application computes the key (NFKC, then
-- lower case; see `username_key` in src/db/users.rs) and writes it with
-- every new user.
ALTER TABLE users ADD COLUMN username_key TEXT;

-- Existing users get the closest key SQL can compute. Limitation: lower()
-- follows the database's LC_CTYPE (ASCII only under the C locale), and no SQL
-- here applies NFKC, so an existing non-ASCII name may keep a key that a new
-- look-alike of it will not collide with. Such accounts still log in by their
-- exact name.
UPDATE users SET username_key = lower(username);

-- Names registered before this migration may already collide on that key
-- (`alice` and `Alice`). The oldest keeps the key; each later one gets a
-- placeholder that no checked name can produce (it starts with U+0001, a
-- control character), so that the unique index below can be built. Those
-- accounts log in by their exact name (see `user_for_login`). The temporary
-- index keeps this from comparing every pair of users.
CREATE INDEX users_lower_username_tmp ON users (lower(username));
UPDATE users SET username_key = chr(1) || id
WHERE EXISTS (
    SELECT 1 FROM users AS older
    WHERE lower(older.username) = lower(users.username)
      AND (older.created_at < users.created_at OR (older.created_at = users.created_at AND older.id < users.id))
);
DROP INDEX users_lower_username_tmp;

ALTER TABLE users ALTER COLUMN username_key SET NOT NULL;
CREATE UNIQUE INDEX users_by_username_key ON users (username_key);
