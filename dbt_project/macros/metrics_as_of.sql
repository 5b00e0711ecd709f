{# "Now" for time-relative metrics: the `metrics_as_of` var when set (tests pin it), else the clock. #}
{% macro metrics_as_of() %}
    {%- if var('metrics_as_of') -%}
        '{{ var('metrics_as_of') }}'::timestamptz
    {%- else -%}
        now()
    {%- endif -%}
{% endmacro %}
