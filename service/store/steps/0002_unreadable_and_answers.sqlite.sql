-- Step 2, frozen: a delivery kept although its body could not be read whole, and what an
-- action's 2xx answer said (deactivate's `disabled`, end-session's state) with any doubt it leaves.
ALTER TABLE deliveries ADD COLUMN problem TEXT;
ALTER TABLE attempts ADD COLUMN answer JSON;
ALTER TABLE attempts ADD COLUMN doubt TEXT;
