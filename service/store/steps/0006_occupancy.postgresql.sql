-- Step 6 of the schema (service/store/migrations.py), for postgresql: frozen: never edit it.
-- deliveries.participants: how many were in the room once the delivery was decided (the rooms
-- list's occupancy sparklines). Null for deliveries decided before this step, and for those that
-- told nothing about a room (kept unread, unknown type, no room).

ALTER TABLE deliveries ADD COLUMN participants INTEGER;
