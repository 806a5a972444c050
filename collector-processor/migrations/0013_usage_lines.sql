-- Custom usage lines (docs/rate-plans.md#usage-lines): per rated call, the plan's usage lines the call reported,
-- as parallel arrays in the plan's line order: the line name, the quantity in micro-units (10⁻⁶ of a unit, so
-- fractional lines stay exact integers), the per-unit price it was billed at (0 when free, not billed or not
-- priced by the tool), its price and its cost. sum(usage_price_nano) is part of price_nano (price_nano =
-- price_call + price_input + price_output + price_duration + sum(usage_price_nano)), so every reader of
-- price_nano (enforcement, the margin guard, the daily views, credits) counts the lines already.
-- input_tokens_priced / output_tokens_priced: the tokens priced at perInputToken / perOutputToken, i.e. the
-- reported tokens less the lines that are subsets of them (cached ⊂ input, reasoning ⊂ output); price_input_nano
-- = input_tokens_priced × the per-token price. Rows landed before this migration read them as input_tokens /
-- output_tokens (DEFAULT), which is what they were priced on. Added at the end of the row (landing writes
-- named columns).
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS input_tokens_priced UInt64 DEFAULT input_tokens;
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS output_tokens_priced UInt64 DEFAULT output_tokens;
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS usage_lines Array(LowCardinality(String)) DEFAULT [];
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS usage_quantity_micro Array(UInt64) DEFAULT [];
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS usage_unit_nano Array(Int64) DEFAULT [];
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS usage_price_nano Array(Int64) DEFAULT [];
ALTER TABLE mcp_tool_calls ADD COLUMN IF NOT EXISTS usage_cost_nano Array(Int64) DEFAULT [];
