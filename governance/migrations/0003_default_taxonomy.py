"""Default purpose taxonomy, data categories (Art. 9(1), Art. 10) and data-subject categories.

A DPO adapts them through the admin or the API; this is a starting point, not a closed list.
"""

from django.db import migrations

PURPOSES = [
    ("ml", "Machine learning", "Developing and operating machine-learning models."),
    ("ml.training", "Model training", "Using personal data to train models."),
    ("ml.training.clinical_risk", "Clinical risk model training", "Training models that estimate clinical risk."),
    ("ml.evaluation", "Model evaluation", "Measuring model quality and fairness on held-out data."),
    ("ml.monitoring", "Model monitoring", "Watching deployed models for drift and errors."),
    ("analytics", "Analytics", "Aggregate statistics about use of the service."),
    ("analytics.product", "Product analytics", "Understanding how the product is used."),
    ("marketing", "Marketing", "Promoting products and services."),
    ("marketing.email", "Email marketing", "Sending marketing emails."),
    ("marketing.profiling", "Marketing profiling", "Building profiles for targeted marketing."),
    ("research", "Research", "Scientific or historical research under Art. 89(1)."),
    ("research.clinical", "Clinical research", "Clinical studies under Art. 89(1) safeguards."),
    ("service_delivery", "Service delivery", "Providing the service the person asked for."),
    ("service_delivery.care", "Care delivery", "Diagnosis, treatment and care."),
    ("service_delivery.billing", "Billing", "Invoicing and payment."),
    ("legal_compliance", "Legal compliance", "Meeting legal obligations of the controller."),
    ("security", "Security", "Protecting systems and detecting fraud or abuse."),
]

# (code, name, Art. 9(1) category or "", Art. 10)
DATA_CATEGORIES = [
    ("identification", "Identification data", "", False),
    ("contact", "Contact details", "", False),
    ("demographic", "Demographic data", "", False),
    ("financial", "Financial data", "", False),
    ("usage", "Usage and behavioural data", "", False),
    ("location", "Location data", "", False),
    ("employment", "Employment data", "", False),
    ("health", "Health data", "health", False),
    ("genetic", "Genetic data", "genetic", False),
    ("biometric", "Biometric data for identification", "biometric", False),
    ("racial_ethnic_origin", "Racial or ethnic origin", "racial_ethnic_origin", False),
    ("political_opinions", "Political opinions", "political_opinions", False),
    ("religious_beliefs", "Religious or philosophical beliefs", "religious_beliefs", False),
    ("trade_union", "Trade-union membership", "trade_union", False),
    ("sex_life_orientation", "Sex life or sexual orientation", "sex_life_orientation", False),
    ("criminal_offences", "Criminal convictions and offences", "", True),
]

# (code, name, vulnerable)
DATA_SUBJECT_CATEGORIES = [
    ("patient", "Patients", True),
    ("customer", "Customers", False),
    ("prospect", "Prospective customers", False),
    ("employee", "Employees", True),
    ("job_applicant", "Job applicants", False),
    ("child", "Children", True),
    ("research_participant", "Research participants", False),
    ("website_visitor", "Website visitors", False),
    ("supplier_contact", "Supplier contacts", False),
]


def load_defaults(apps, schema_editor):
    Purpose = apps.get_model("governance", "Purpose")
    DataCategory = apps.get_model("governance", "DataCategory")
    DataSubjectCategory = apps.get_model("governance", "DataSubjectCategory")
    by_code = {}
    # Parents are listed before children, so each parent exists when its child is created.
    for code, name, description in PURPOSES:
        parent = by_code.get(code.rpartition(".")[0]) if "." in code else None
        purpose, _ = Purpose.objects.get_or_create(
            code=code, defaults={"name": name, "description": description, "parent": parent}
        )
        by_code[code] = purpose
    for code, name, special, criminal in DATA_CATEGORIES:
        DataCategory.objects.get_or_create(
            code=code, defaults={"name": name, "special_category": special, "criminal_offence_data": criminal}
        )
    for code, name, vulnerable in DATA_SUBJECT_CATEGORIES:
        DataSubjectCategory.objects.get_or_create(code=code, defaults={"name": name, "vulnerable": vulnerable})


class Migration(migrations.Migration):
    dependencies = [("governance", "0002_roles_and_chain_head")]
    operations = [migrations.RunPython(load_defaults, migrations.RunPython.noop)]
