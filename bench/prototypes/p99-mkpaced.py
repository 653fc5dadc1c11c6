import sys, json
sys.path.insert(0, "/tmp/wt-bench")
from pathlib import Path
from bench import loadgen
lines = open("/tmp/prof/post.lua").read()
# rebuild bodies from mk: regenerate with the same key is impossible; re-sign with a new key and rewrite key.pem
from bench.common import Signer, event_body
s = Signer(); open("key.pem", "w").write(s.public_pem)
bodies = [event_body("participant-joined", meetingId=f"room-{i%50}", sessionId="s1", participantId=f"p{i}", participantName="X") for i in range(300)]
sigs = [s.sign(b) for b in bodies]
rate = float(sys.argv[1])
loadgen.write_wrk_script(Path("/tmp/prof/paced.lua"), bodies, sigs, rate_per_thread=rate / 2)
loadgen.write_wrk_script(Path("/tmp/prof/post.lua"), bodies, sigs)
