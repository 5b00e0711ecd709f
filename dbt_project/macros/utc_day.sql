{# The UTC calendar day of a timestamptz, whatever the session time zone is. #}
{% macro utc_day(column) %}({{ column }} at time zone 'UTC')::date{% endmacro %}
