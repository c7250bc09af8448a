#!/usr/bin/env bash
# The calls an ML pipeline and a DPO make, end to end, against a running Privacy Ledger.
# Local use: `make run` in one terminal, then `bash docs/pipeline-walkthrough.sh` in another.
# Needs curl and python3. API defaults to http://127.0.0.1:8000/api/v1.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG="${DEBUG:-1}"   # local keys; in production run create_api_key with the real settings
API="${API:-http://127.0.0.1:8000/api/v1}"
PY=.venv/bin/python
RUN="wt$(date +%s)"          # makes names and identifiers unique per run
J='Content-Type: application/json'
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {'d': d}))" "$1"; }

KEY=$($PY manage.py create_api_key --user pipeline --role ml_engineer --name walkthrough 2>/dev/null)
DPO=$($PY manage.py create_api_key --user dpo-walkthrough --role dpo --name walkthrough 2>/dev/null)
curl -sf "$API/whoami/" -H "Authorization: Token $KEY"; echo

echo "== 1. The DPO records an Art. 30 processing activity (health data under consent + Art. 9(2)(a))"
ACTIVITY=$(curl -sf -X POST "$API/processing-activities/" -H "Authorization: Token $DPO" -H "$J" -d '{
  "name": "Clinical risk training '"$RUN"'", "controller_name": "Example Clinic", "controller_contact": "privacy@clinic.example",
  "dpo_contact": "dpo@clinic.example", "purposes": ["ml.training.clinical_risk"], "data_subject_categories": ["patient"],
  "retention": [{"data_category": "health", "retention": "P1825D"}],
  "recipients": [{"name": "Cloud provider", "third_country": ""}], "third_country_transfers": [],
  "security_measures": "Pseudonymisation on arrival, encryption at rest, role-based access.",
  "lawful_basis": "consent", "special_category_condition": "9_2_a"}' | json 'd["id"]')
echo "processing activity $ACTIVITY"

echo "== 2. The consent platform records consents for 300 patients (3 of them withdraw)"
python3 - "$RUN" > /tmp/$RUN-consents.json <<'PY'
import json, sys
run = sys.argv[1]
events = [{"event_id": f"{run}-c{i}", "subject": f"{run}-patient-{i}@clinic.example", "purpose": "ml.training.clinical_risk",
           "action": "given", "occurred_at": "2025-03-01T10:00:00Z", "notice_version": "v3",
           "notice_text": "We would like to use your health records to train a clinical risk model.",
           "method": "web_form", "evidence": {"form_url": "https://portal.example/consent", "ip": "203.0.113.57"}}
          for i in range(300)]
events += [{**events[i], "event_id": f"{run}-w{i}", "action": "withdrawn", "occurred_at": "2025-06-01T10:00:00Z"} for i in range(3)]
print(json.dumps(events))
PY
curl -sf -X POST "$API/consent-events/" -H "Authorization: Token $DPO" -H "$J" --data-binary @/tmp/$RUN-consents.json; echo
curl -sf -X POST "$API/consent-status/" -H "Authorization: Token $KEY" -H "$J" \
  -d '{"purpose": "ml.training.clinical_risk", "subjects": ["'"$RUN"'-patient-0@clinic.example", "'"$RUN"'-patient-9@clinic.example", "nobody@clinic.example"]}'; echo

echo "== 3. The pipeline registers a dataset and uploads its records as CSV"
DATASET=$(curl -sf -X POST "$API/datasets/" -H "Authorization: Token $KEY" -H "$J" -d '{"name": "clinical-risk-'"$RUN"'",
  "owner": "ML platform", "processing_activity": '"$ACTIVITY"', "source_system": "EHR extract",
  "schema": {"features": [{"name": "age", "type": "int"}, {"name": "bmi", "type": "float"}, {"name": "smoker", "type": "bool"}],
             "label": {"name": "outcome", "type": "bool"}}}' | json 'd["id"]')
python3 - "$RUN" > /tmp/$RUN-records.csv <<'PY'
import random, sys
run = sys.argv[1]
rng = random.Random(1)
print("subject,age,bmi,smoker,outcome")
for i in range(300):
    for _ in range(2):
        age, bmi, smoker = rng.randint(20, 90), round(rng.uniform(17, 40), 1), rng.random() < 0.3
        risk = (age - 55) / 20 + (bmi - 27) / 6 + (1.0 if smoker else 0.0) + rng.gauss(0, 0.7)
        print(f"{run}-patient-{i}@clinic.example,{age},{bmi},{str(smoker).lower()},{str(risk > 0.3).lower()}")
PY
curl -sf -X POST "$API/datasets/$DATASET/records/" -H "Authorization: Token $KEY" -H 'Content-Type: text/csv' \
  --data-binary @/tmp/$RUN-records.csv; echo

echo "== 4. A consent-filtered, immutable snapshot for the purpose"
SNAPSHOT=$(curl -sf -X POST "$API/snapshots/" -H "Authorization: Token $KEY" -H "$J" \
  -d '{"dataset": '"$DATASET"', "purpose": "ml.training.clinical_risk"}' | tee /tmp/$RUN-snapshot.json | json 'd["id"]')
json '{k: d[k] for k in ("id", "included_count", "excluded_counts", "merkle_root")}' < /tmp/$RUN-snapshot.json

echo "== 5. Differentially private training in a Celery worker (202), then the model"
RUN_ID=$(curl -sf -X POST "$API/training-runs/" -H "Authorization: Token $KEY" -H "$J" -d '{"snapshot": '"$SNAPSHOT"',
  "name": "risk-'"$RUN"'", "model_spec": {"hidden_sizes": [32]}, "epochs": 5, "batch_size": 64,
  "target_epsilon": 3.0, "max_grad_norm": 1.0}' | json 'd["id"]')
for _ in $(seq 1 120); do
  STATUS=$(curl -sf "$API/training-runs/$RUN_ID/" -H "Authorization: Token $KEY" | json 'd["status"]')
  [ "$STATUS" = succeeded ] || [ "$STATUS" = failed ] && break
  sleep 1
done
echo "training run $RUN_ID: $STATUS"
curl -sf "$API/models/?training_run=$RUN_ID" -H "Authorization: Token $KEY" \
  | json '[{k: m.get(k) for k in ("id", "name", "version", "epsilon", "delta", "status")} for m in d["results"]]'

echo "== 6. Patient 5 asks for erasure (Art. 17): receive, verify, impact, execute, certificate"
REQ=$(curl -sf -X POST "$API/erasure-requests/" -H "Authorization: Token $DPO" -H "$J" \
  -d '{"subject": "'"$RUN"'-patient-5@clinic.example", "ground": "17_1_b", "channel": "email"}' | json 'd["id"]')
curl -sf -X POST "$API/erasure-requests/$REQ/verify/" -H "Authorization: Token $DPO" -H "$J" -d '{"method": "signed letter"}' >/dev/null
curl -sf "$API/erasure-requests/$REQ/impact/" -H "Authorization: Token $DPO" | json 'd.get("counts", d)'
curl -sf -X POST "$API/erasure-requests/$REQ/execute/" -H "Authorization: Token $DPO" >/dev/null
for _ in $(seq 1 120); do
  STATUS=$(curl -sf "$API/erasure-requests/$REQ/" -H "Authorization: Token $DPO" | json 'd["status"]')
  [ "$STATUS" = completed ] && break
  sleep 1
done
echo "erasure request $REQ: $STATUS"
curl -sf -o "/tmp/$RUN-certificate.pdf" "$API/erasure-requests/$REQ/certificate/" -H "Authorization: Token $DPO"
echo "certificate: /tmp/$RUN-certificate.pdf"
curl -sf "$API/audit-events/verify/" -H "Authorization: Token $DPO"; echo
