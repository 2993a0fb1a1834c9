// Loaded before the Jupyter widgets HTML manager on pages that embed widget state.
(function () {
  // 1. Each AMD module of the manager (base, controls, html-manager) finds its icon fonts next to
  //    the URL RequireJS gives it; RequireJS (which reads a global `require` object as its
  //    configuration) must resolve every one of them to this folder, not to the page's folder
  //    (the longest matching prefix wins, so libembed-amd keeps its own entry).
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  window.require = {
    paths: {
      "@jupyter-widgets": here + "html-manager",
      "@jupyter-widgets/html-manager/dist": here + "html-manager",
    },
  };
  // 2. The manager typesets widget labels with MathJax 2's API (MathJax.Hub.Queue); the book
  //    serves MathJax 3, so translate the call.
  var hub = {
    Queue: function (job) {
      var element = job && job[2];
      var mj = window.MathJax;
      if (!element || !mj || !mj.typesetPromise) return;
      var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
      ready.then(function () { return mj.typesetPromise([element]); });
    },
  };
  document.addEventListener("DOMContentLoaded", function () {
    if (window.MathJax && !window.MathJax.Hub) window.MathJax.Hub = hub;
  });
})();
