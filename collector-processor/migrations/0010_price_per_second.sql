-- The per-second price a billed call was rated at (0 when its rate prices no seconds, or the call was free or a
-- failed call not billed). The invoice's duration line is every billed call whose rate prices seconds: its
-- quantity must include calls whose duration amount rounds to 0 nano-units, which price_duration_nano alone
-- cannot tell apart from calls whose rate has no per-second price. Added at the end of the row (landing writes
-- named columns); 0 for rows landed before this migration (the invoice then falls back to
-- price_duration_nano != 0 for them).
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS price_per_second_nano Int64 DEFAULT 0;
