window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/labelling/openapi",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};
