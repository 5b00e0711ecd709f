{# The start of the UTC hour of a timestamptz, whatever the session time zone is. #}
{% macro utc_hour(column) %}date_trunc('hour', {{ column }}, 'UTC'){% endmacro %}
