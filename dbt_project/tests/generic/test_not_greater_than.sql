{# Fails for each row where column_name exceeds other_column (e.g. min <= max, part <= whole). #}
{% test not_greater_than(model, column_name, other_column) %}

select {{ column_name }}, {{ other_column }}
from {{ model }}
where {{ column_name }} > {{ other_column }}

{% endtest %}
